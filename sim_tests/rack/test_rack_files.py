"""Rack files a careless or hostile colleague writes: each is refused in one line with exit status 2
(no traceback), and `~` in a workdir is the board user's home, expanded on the board's side."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.rack.rackfile import RackError, normal_host, parse_rack

REPO = Path(__file__).resolve().parents[2]

BOARD = """
[[boards]]
name = "{name}"
host = "{host}"
kind = "virtual-pynq-z2"
key = "id"
port = {port}
data_port = {data_port}
"""


def board(name="a", host="127.0.0.1", port=2201, data_port=7701, extra=""):
    return BOARD.format(name=name, host=host, port=port, data_port=data_port) + extra


CASES = {
    "rack_is_a_number": ("rack = 5\n" + board(), r"r\.toml:1: rack: must be a table"),
    "deeply_nested": ("x = " + "[" * 3000 + "]" * 3000 + "\n" + board(), "nested too deeply"),
    "nested_tables": ("[rack]\nname = \"t\"\n[rack.a.b.c.d.e]\nx = 1\n" + board(), "nested more than 4 levels"),
    "boards_not_tables": ("boards = [5]\n", r"boards\[0\]: must be a table"),
    "localhost_and_127": (board() + board("b", "localhost", 2201, 7702), "127.0.0.1 and localhost are one host"),
    "uppercase_dot_host": (board(host="Pynq-A.lab.") + board("b", "pynq-a.lab", 2201, 7702),
                           "is also used by board 'a'"),
    "ipv6_loopback": (board(host="::1") + board("b", "localhost", 2202, 7701), "7701 is also used"),
    "tilde_user": (board(extra='workdir = "~bob/x"\n'), "`~user` is not supported"),
    "workdir_is_home": (board(extra='workdir = "~/"\n'), "is the home or root folder itself"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_rack_file_is_one_line_exit_2(case, tmp_path):
    text, message = CASES[case]
    (tmp_path / "id").write_text("not a key, never read: the file is refused first\n")
    f = tmp_path / "r.toml"
    f.write_text(text)
    with pytest.raises(RackError, match=message):
        parse_rack(text, f)
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "rack", "check", str(f)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("splitrack rack: error: ")


def test_not_utf8_is_one_line(tmp_path):
    f = tmp_path / "r.toml"
    f.write_bytes(b"\xff\xfe[rack]\n")
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "rack", "check", str(f)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot read" in r.stderr


def test_host_names_normalised():
    assert normal_host("localhost") == normal_host("127.0.0.1") == normal_host("::1") == normal_host("LOCALHOST.")
    assert normal_host("[::ffff:10.0.0.1]") == "10.0.0.1"
    assert normal_host("Pynq-A.Lab.") == "pynq-a.lab"
    assert normal_host("10.0.0.1") != normal_host("10.0.0.2")


def test_distinct_boards_still_load(tmp_path):
    text = board() + board("b", "localhost", 2202, 7702) + board("c", "10.0.0.5", 22, 7700, 'workdir = "~/x"\n')
    rack = parse_rack(text, tmp_path / "r.toml")
    assert [b.name for b in rack.boards] == ["a", "b", "c"]


def test_tilde_workdir_is_the_boards_home(tmp_path):
    """`workdir = "~/x"` is x in the board user's home (the board's, expanded by the board side), never a
    folder literally named `~`."""
    from harness.rack.rackfile import write_rack
    from harness.rack.ssh import connect
    from harness.rack.virtual_rack import rack_down, rack_up

    out = tmp_path / "not" / "yet" / "rack.toml"  # rack up makes the folder of --out
    rack = rack_up(1, out, state=tmp_path / "s", progress=lambda s: None)
    try:
        b = rack.boards[0]
        b.workdir = "~/x"
        write_rack(rack, out)
        with connect(b) as c:
            assert c.remote_path(b.workdir) == c.home + "/x"
            assert c.remote_path("~") == c.home
            c.mkdirs(c.remote_path(b.workdir))
            assert c.exists(c.home + "/x") and not c.exists(c.home + "/~")
        home = tmp_path / "s" / b.name / "home"
        assert (home / "x").is_dir() and not (home / "~").exists()
    finally:
        rack_down(out)


def _rack_text(n: int) -> str:
    return '[rack]\nname = "big"\n[defaults]\nkind = "pynq-z2"\nkey = "id"\n' + "".join(
        f'\n[[boards]]\nname = "b{i}"\nhost = "10.0.{i // 250}.{i % 250}"\n' for i in range(n))


def test_rack_files_parse_in_linear_time(tmp_path):
    """The work parse_rack does (Python line events in rackfile.py, a count that does not depend on the
    machine's load) grows with the number of boards, not with its square: 4x the boards, about 4x the events
    (a table lookup that scanned every table made it 8x here, and 10,000 boards took minutes)."""
    def events(n: int) -> int:
        count = [0]
        text = _rack_text(n)

        def tracer(frame, event, arg):
            if event == "call":
                return tracer if frame.f_code.co_filename.endswith("rackfile.py") else None
            count[0] += 1
            return tracer

        sys.settrace(tracer)
        try:
            rack = parse_rack(text, tmp_path / "r.toml")
        finally:
            sys.settrace(None)
        assert len(rack.boards) == n
        return count[0]

    small, large = events(100), events(400)
    assert large / small < 4.5, (small, large)


def test_a_rack_file_that_is_a_fifo_or_dev_zero_is_refused_at_once(tmp_path):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    for f in (fifo, zero):
        r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "rack", "check", str(f)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
