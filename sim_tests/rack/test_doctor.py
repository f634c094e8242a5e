"""`splitrack doctor` (harness.jobs.doctor, harness.rack.checks): a virtual rack that is all good, and virtual boards
made wrong on purpose (virtual_board FAULTS, a full disk, a pynq_version the board does not carry): one line
per problem naming the board and what to do, exit 2; deploy runs the same checks and refuses before it
uploads anything."""
from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest

from harness.cli.commands import main
from harness.jobs.doctor import clock_offset, clock_problem, doctor
from harness.rack import checks
from harness.rack.deploy import DeployError, deploy, undeploy
from harness.rack.rackfile import Board, Rack, RackError, load_rack, parse_rack, write_rack
from harness.rack.ssh import Connection, Result
from harness.rack.virtual_rack import start_board, stop_board

# board -> (start_board options, rack-file changes, the problem's check, words its line must hold)
WRONG = {
    "nonumpy": ({"faults": ["no-numpy"]}, {}, "numpy",
                ["has no numpy", "-m pip install numpy", "set python = "]),
    "oldpy": ({"faults": ["old-python"]}, {}, "python",
              ["Python 3.6.9, older than 3.8", "flash a newer PYNQ image", "set python = "]),
    "pynq31": ({"pynq_version": "3.0.1"}, {"pynq_version": "3.1.0"}, "pynq",
               ["has pynq 3.0.1", 'pynq_version = "3.1.0"', "flash the PYNQ 3.1.0 image", 'set pynq_version = "3.0.1"']),
    "full": ({"disk_mb": 256}, {}, "disk",
             ["MiB of disk free", "free space on the board's SD card", "set workdir"]),
    "nosudo": ({"faults": ["sudo-refused"]}, {"sudo": True}, "sudo",
               ["`sudo -n` refused (sudo: a password is required)", "NOPASSWD", "set sudo = false"]),
}


@pytest.fixture(scope="module")
def wrong_rack(tmp_path_factory):
    """A rack file of one good board (it plays PYNQ 3.0.1 and the rack says so, sudo = true) and the boards of
    WRONG, each wrong in one way."""
    state = tmp_path_factory.mktemp("wrong")
    procs, boards = [], []
    try:
        good, p = start_board(state, "good", pynq_version="3.0.1")
        procs.append(p)
        boards.append(replace(good, sudo=True))
        for name, (opts, changes, _, _) in WRONG.items():
            b, p = start_board(state, name, **opts)
            procs.append(p)
            boards.append(replace(b, **changes))
        # a full disk: the board's home holds a file (sparse: costs nothing here) that leaves it 4 MiB
        full = next(b for b in boards if b.name == "full")
        with Connection(full) as c:
            c.run(["truncate", "-s", "252M", c.remote_path("old-recordings.bin")])
        path = write_rack(Rack("wrong", boards), state / "wrong.toml")
        yield path
    finally:
        for p in procs:
            stop_board(p)


def test_doctor_names_each_wrong_board_and_its_fix_in_one_line_exit_2(wrong_rack, capsys):
    assert main(["doctor", "--boards", str(wrong_rack)]) == 2
    out = capsys.readouterr().out
    lines = out.splitlines()
    print(out)
    assert len(lines) == len(WRONG), lines  # one line per problem, nothing for the good board
    for name, (_, _, check, words) in WRONG.items():
        [line] = [ln for ln in lines if ln.startswith(f"{name}: ")]
        assert line.startswith(f"{name}: {check}: "), line
        for w in words:
            assert w in line, (w, line)
    assert not [ln for ln in lines if ln.startswith("good")]


def test_doctor_json_is_one_document_with_every_boards_facts(wrong_rack, capsys):
    assert main(["doctor", "--boards", str(wrong_rack), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    by = {b["board"]: b for b in doc["boards"]}
    assert doc["ok"] is False and len(doc["problems"]) == len(WRONG)
    assert by["good"]["ok"] and by["good"]["facts"]["pynq"] == "3.0.1" and by["good"]["facts"]["sudo"] == "ok"
    assert by["nonumpy"]["facts"]["numpy"] == "missing"
    assert by["oldpy"]["facts"]["python"] == "3.6.9"
    assert by["nosudo"]["facts"]["sudo"] == "refused"
    assert by["full"]["facts"]["free_disk_mib"] == 4
    assert [p["check"] for p in by["pynq31"]["problems"]] == ["pynq"]


def test_rack_check_is_the_same_checks(wrong_rack, capsys):
    assert main(["rack", "check", str(wrong_rack)]) == 1
    out = capsys.readouterr().out
    assert "good: ok (" in out
    for name, (_, _, check, words) in WRONG.items():
        [line] = [ln for ln in out.splitlines() if ln.startswith(f"{name}: ")]
        assert f"QUARANTINED: {check}: " in line and words[0] in line, line


def test_deploy_refuses_in_one_line_before_uploading_anything(wrong_rack, plan3):
    rack = load_rack(wrong_rack)
    boards = [rack.board("good"), rack.board("nonumpy"), rack.board("nosudo")]
    with pytest.raises(DeployError) as e:
        deploy(plan3, Rack("t", boards))
    msg = str(e.value)
    assert msg.startswith("nothing deployed: ") and "\n" not in msg
    assert [(f.board, f.stage) for f in e.value.failures] == [("nonumpy", "numpy"), ("nosudo", "sudo")]
    for b in boards:
        with Connection(b) as c:
            assert not c.exists(c.remote_path(f"{b.workdir}/part")), b.name


def test_all_good_virtual_rack_with_and_without_a_plan(rack_file, plan3, capsys):
    rack = load_rack(rack_file)
    assert main(["doctor", "--boards", str(rack_file)]) == 0
    out = capsys.readouterr().out
    assert f"doctor: {len(rack.boards)} boards ready" in out
    for b in rack.boards:
        row = [ln for ln in out.splitlines() if ln.startswith(b.name + " ")]
        assert row and "3.0.1" in row[0] and "free" in row[0], out
    dep = deploy(plan3, rack)
    try:
        report = doctor(rack, plan3)
        assert report.ok, report.lines()
        for name, b in dep.boards.items():
            f = next(r for r in report.boards if r.board == b.name).facts
            # the data port is held by our own agent (found with the deployment's secret): not a problem
            assert f["partition"] == name and f["data_port"] == f"{b.data_port} agent of {name} (pid {dep.placed[name].pid})"
            assert "partition.so" in f["artifact"].split(", ") and int(f["need_disk_mib"]) > 32
            # same machine, same clock: the true offset is 0, which the error bound must cover
            assert abs(f["clock_offset_ms"]) <= f["clock_error_ms"] + 0.1, f
        assert main(["doctor", "--boards", str(rack_file), str(plan3.root)]) == 0
        assert f"boards ready for plan {plan3.hash}" in capsys.readouterr().out
    finally:
        undeploy(rack)


def test_data_port_held_by_another_program(rack_file, tmp_path, capsys):
    b = load_rack(rack_file).boards[0]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((b.host, b.data_port))
        s.listen()
        path = write_rack(Rack("one", [b]), tmp_path / "one.toml")
        assert main(["doctor", "--boards", str(path)]) == 2
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{b.name}: data-port: port {b.data_port} is held by another program")
    assert "set data_port to a free port" in line


def test_plan_needs_more_boards_and_bitstreams_for_real_boards(plan3, tmp_path):
    key = tmp_path / "key"
    key.write_text("")
    real = [Board(name=f"z{i}", host="192.0.2.1", port=22 + i, data_port=7700 + i, kind="pynq-z2", key=key)
            for i in range(3)]
    from harness.jobs.doctor import plan_needs

    needs, facts, problems = plan_needs(plan3, Rack("lab", real[:2]))
    assert [(p.board, p.check) for p in problems] == [("plan", "placement")]
    assert "add boards" in problems[0].message
    needs, facts, problems = plan_needs(plan3, Rack("lab", real))
    assert [(p.board, p.check) for p in problems] == [(f"z{i}", "bitstream") for i in range(3)]
    assert all("splitrack build" in p.message for p in problems)


def test_unreadable_rack_file_with_json_is_still_one_json_document(tmp_path, capsys):
    assert main(["doctor", "--boards", str(tmp_path / "missing.toml"), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["problems"][0].startswith("rack: ") and "rack file not found" in doc["problems"][0]


def test_pynq_version_is_validated_where_the_rack_file_is_read(tmp_path):
    text = ('[[boards]]\nname = "a"\nhost = "h"\nkind = "pynq-z2"\nkey = "k"\npynq_version = "{}"\n')
    assert parse_rack(text.format("3.0.1"), tmp_path / "r.toml").boards[0].pynq_version == "3.0.1"
    with pytest.raises(RackError, match=r"r.toml:6: pynq_version: 'three' is not a version"):
        parse_rack(text.format("three"), tmp_path / "r.toml")
    assert parse_rack(text.replace('pynq_version = "{}"\n', ""), tmp_path / "r.toml").boards[0].pynq_version is None


# --- the rules, with other values than the virtual boards' faults give ------------------------------------
class _Board:
    """A stand-in connection: answers the runtime probe with `info` (what a board's python would print)."""

    def __init__(self, info):
        self.info = info

    def run(self, argv, **kw):
        return Result(list(argv), 0, (self.info if isinstance(self.info, str) else json.dumps(self.info)) + "\n", "")

    def remote_path(self, rel):
        return f"/home/xilinx/{rel}"

    def exists(self, path, stage=""):
        return True


def _runtime(board: Board, /, **info):
    full = {"python": [3, 10, 12], "machine": "armv7l", "board": "Pynq-Z2", "numpy": {"version": "1.26.4"},
            "pynq": {"version": "3.0.1"}, "image": "Release 3.0.1"}
    full.update(info)
    report = checks.BoardReport(board.name, board.kind)
    checks.check_runtime(checks.Context(board, _Board(full), checks.Need(), True, None, report))
    return [(p.check, p.message) for p in report.problems]


@pytest.mark.parametrize("version, ok", [([2, 7, 18], False), ([3, 6, 9], False), ([3, 7, 17], False),
                                         ([3, 8, 0], True), ([3, 10, 12], True), ([3, 12, 1], True)])
def test_python_version_rule(tmp_path, version, ok):
    b = Board(name="z", host="h", kind="pynq-z2", key=tmp_path / "k")
    problems = _runtime(b, python=version)
    assert (problems == []) == ok, problems


@pytest.mark.parametrize("stated, have, ok", [(None, "2.7.0", True), ("3.0.1", "3.0.1", True), ("3.0", "3.0.0", True),
                                              ("3.0.1", "3.1.0", False), ("2.7", "3.0.1", False)])
def test_pynq_version_rule(tmp_path, stated, have, ok):
    b = Board(name="z", host="h", kind="pynq-z2", key=tmp_path / "k", pynq_version=stated)
    problems = _runtime(b, pynq={"version": have})
    assert (problems == []) == ok, problems


@pytest.mark.parametrize("kind, info, check", [
    ("pynq-z2", {"machine": "x86_64", "board": None}, "kind"),  # a PC listed as a PYNQ-Z2
    ("pynq-z2", {"board": "Pynq-Z1"}, "kind"),  # another PYNQ board
    ("pynq-z2", {"board": None}, "kind"),  # an image that does not say
    ("pynq-z2", {"pynq": {"error": "ModuleNotFoundError: No module named 'pynq'"}}, "pynq"),
    ("pynq-z2", {"numpy": {"error": "ImportError: libopenblas.so.0: cannot open shared object file"}}, "numpy"),
    ("virtual-pynq-z2", {"machine": "armv7l"}, "kind"),  # a real board listed as virtual
])
def test_board_kind_rules(tmp_path, kind, info, check):
    b = Board(name="z", host="h", kind=kind, key=tmp_path / "k")
    assert [c for c, _ in _runtime(b, **info)] == [check]


@pytest.mark.parametrize("offset_s, error_s, problem", [(0.0, 0.01, False), (0.9, 0.01, False), (1.2, 0.5, False),
                                                        (1.2, 0.1, True), (-30.0, 0.05, True), (3600.0, 0.2, True)])
def test_clock_rule(offset_s, error_s, problem):
    t1 = 1_700_000_000_000_000_000
    delay = int(2 * error_s * 1e9)
    board = t1 + delay // 2 + int(offset_s * 1e9)
    est = clock_offset([(t1, board, board, t1 + delay), (t1, board, board, t1 + 3 * delay)])
    assert est.error_ns == pytest.approx(error_s * 1e9)  # the lowest-delay exchange kept
    assert (clock_problem(est) is not None) == problem


@pytest.mark.parametrize("answer", ['{"python": "3.10"}', '{"python": ["x", 1]}', "[1, 2]", "Segmentation fault",
                                    '{"python": [3, 10], "numpy": "yes", "machine": ["armv7l"], "df": 5}'])
def test_a_board_s_odd_answer_is_a_problem_not_a_traceback(tmp_path, answer):
    """The probe's answer comes from the board: whatever it says, the check ends in facts and problems."""
    b = Board(name="z", host="h", kind="pynq-z2", key=tmp_path / "k")
    report = checks.BoardReport(b.name, b.kind)
    ctx = checks.Context(b, _Board(answer), checks.Need(), True, None, report)
    for check in checks.CHECKS.values():
        if check is not checks.check_data_port:
            check(ctx)
    assert report.problems and all(p.board == "z" and "\n" not in p.message for p in report.problems)
