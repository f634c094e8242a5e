"""Deployment and the pytest plugin on a small virtual rack: CLI, placement errors, quarantine, xdist leases."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.rack.deploy import deploy, undeploy
from harness.rack.rackfile import Rack, load_rack
from harness.rack.virtual_rack import rack_down, rack_up, start_board, stop_board
from splitting.errors import UserError

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fc_plan_dir(tmp_path_factory):
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    folder = tmp_path_factory.mktemp("fc_seq")
    write_plan(plan, models, folder)
    return folder



def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli.commands", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_cli_deploy_then_redeploy_skips(fc_plan_dir, rack_file):
    r = _cli("deploy", fc_plan_dir, "--boards", rack_file)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("  flashed") == 3, r.stdout
    wiring = json.loads((fc_plan_dir / "wiring.json").read_text())
    boards = load_rack(rack_file).boards
    assert {k: (v["board"], v["port"]) for k, v in wiring["endpoints"].items()} == \
           {f"s{i}": (boards[i].name, boards[i].data_port) for i in range(3)}
    r = _cli("deploy", fc_plan_dir, "--boards", rack_file)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("not flashed (same artifact)") == 3 and "board carries the same artifact" in r.stdout
    undeploy(load_rack(rack_file))


def test_virtual_boards_run_the_fast_model(fc_plan_dir, rack_file):
    """deploy gives virtual boards fast_model.py, the partition's fast model and the backend kind "fast"; each
    agent checks it against the emulation library at start and keeps it."""
    import time

    r = _cli("deploy", fc_plan_dir, "--boards", rack_file, "--force")
    assert r.returncode == 0, r.stderr
    try:
        deadline = time.monotonic() + 20
        while True:
            logs = "".join(p.read_text(errors="replace") for p in (rack_file.parent / "state").rglob("agent-*.log"))
            if logs.count("backend fast: fast model == emulation library") == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert logs.count("backend fast: fast model == emulation library") == 3, logs[-2000:]
        assert len(list((rack_file.parent / "state").rglob("partition.fast.npz"))) == 3
        assert logs.count("(compiled kernel: ") == 3, logs[-2000:]  # and its compiled kernel (libfastkernel.so)
    finally:
        undeploy(load_rack(rack_file))


def test_agent_started_with_another_config_is_restarted(fc_plan_dir, rack_file):
    """New files on the board but the agent of an older config still running (a deployment that died between
    upload and restart): the next deployment must restart it, not skip it."""
    from harness.rack.ssh import connect
    from splitting.plan import Plan

    rack = load_rack(rack_file)
    plan = Plan.load(fc_plan_dir)
    first = deploy(plan, rack)
    b = first.boards["s2"]
    with connect(b) as c:
        c.put_bytes(b'{"pid": %d, "config": "an older agent.json"}' % first.placed["s2"].pid,
                    c.remote_path("splitrack/part/running.json"))
    again = deploy(plan, rack)
    assert again.placed["s2"].restarted and again.placed["s2"].pid != first.placed["s2"].pid
    assert again.flashed == [] and not again.placed["s0"].restarted
    undeploy(rack)


def test_too_few_boards_says_what_to_do(fc_plan_dir, rack_file):
    from splitting.plan import Plan

    rack = load_rack(rack_file)
    with pytest.raises(UserError, match=r"3 partitions and the rack 2 usable boards.*rack up --n-boards 3"):
        deploy(Plan.load(fc_plan_dir), rack.subset(rack.names[:2]))


def test_real_board_without_bitstream_points_to_build(fc_plan_dir, rack_file):
    from splitting.plan import Plan

    rack = load_rack(rack_file)
    real = Rack("r", [replace(b, kind="pynq-z2") for b in rack.boards])
    with pytest.raises(UserError, match=r"no bitstream .*splitrack build"):
        deploy(Plan.load(fc_plan_dir), real)


def test_timing_model_needs_an_estimate(fc_plan_dir, rack_file):
    from splitting.plan import Plan

    rack = load_rack(rack_file)
    timed = Rack("t", [replace(b, timing="estimate") for b in rack.boards])
    plan = Plan.load(fc_plan_dir)
    if all((p.estimate or {}).get("cycles") for p in plan.partitions.values()):
        pytest.skip("split_model now records cycle estimates")
    with pytest.raises(UserError, match="no cycle estimate"):
        deploy(plan, timed)


def test_timing_model_makes_a_board_take_the_fpga_time(fc_plan_dir, rack_file):
    from harness.measure.stream import Pipeline
    from splitting.plan import Plan
    from splitting.reference_models import digits_data, model_inputs

    plan = Plan.load(fc_plan_dir)
    plan.partitions["s1"].estimate = {"cycles": 200000}  # 2 ms at the plan's 100 MHz: far above the emulation
    rack = load_rack(rack_file)
    timed = Rack("t", [rack.boards[0], replace(rack.boards[1], timing="estimate"), rack.boards[2]])
    dep = deploy(plan, timed)
    x = model_inputs("fc", digits_data()[2][:10])
    with Pipeline(dep.wiring) as pipe:
        res = pipe.stream(x, timeout=10)
    for f in res.frame_ids:
        st = res.stamps(f)
        assert st["s1"]["t_compute_end"] - st["s1"]["t_compute_start"] >= 2_000_000
    undeploy(rack)


# --- the pytest plugin, run in a child pytest ------------------------------------------------------------
HW_TEST = '''
import json, os, time
import pytest

pytestmark = pytest.mark.hw

def test_two_boards(lease):
    boards = lease(2)
    t0 = time.time()
    time.sleep(0.6)
    with open(os.environ["LEASE_LOG"], "a") as f:
        f.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", "-"),
                            "boards": [b.name for b in boards], "t0": t0, "t1": time.time()}) + "\\n")

test_a = test_b = test_c = test_d = test_two_boards

def test_every_board_healthy(rack):
    assert "starved" not in rack.names

def test_needs_more_than_healthy(lease):
    lease(4)
'''


def test_plugin_quarantines_and_leases(pytester, monkeypatch, rack_file, tmp_path):
    starved, proc = start_board(tmp_path / "s", "starved", memory_free_mb=20)
    try:
        rack = load_rack(rack_file)
        mixed = Rack("mixed", rack.boards + [starved])
        from harness.rack.rackfile import write_rack

        path = write_rack(mixed, tmp_path / "mixed.toml")
        pytester.makepyfile(test_hw=HW_TEST)
        log = tmp_path / "leases.jsonl"
        monkeypatch.setenv("LEASE_LOG", str(log))
        res = pytester.runpytest_subprocess("-m", "hw", "--boards", str(path), "-n", "2", "-rs",
                                            timeout=300)
    finally:
        stop_board(proc)
    out = res.stdout.str()
    res.assert_outcomes(passed=6, skipped=1)
    assert "starved: QUARANTINED: memory: only 20 MiB of memory available" in out
    assert "splitrack: quarantined boards" in out
    assert "needs 4 healthy board(s)" in out and "starved quarantined" in out
    # no board was ever held by two tests at once, and both workers ran tests
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 5 and {r["worker"] for r in rows} == {"gw0", "gw1"}
    for i, a in enumerate(rows):
        assert "starved" not in a["boards"]
        for b in rows[i + 1:]:
            if set(a["boards"]) & set(b["boards"]):
                assert a["t1"] <= b["t0"] or b["t1"] <= a["t0"], (a, b)


def test_hw_tests_skip_without_a_rack(pytester):
    pytester.makepyfile(test_hw=HW_TEST)
    res = pytester.runpytest_subprocess("-rs", "-p", "no:xdist")
    res.assert_outcomes(skipped=7)
    assert "no rack given (run with --boards" in res.stdout.str()


def test_deploy_reuses_the_lease_s_ssh_connection_one_handshake_per_board(plan3, rack_file, monkeypatch):
    """Leasing a board opens its SSH connection; the deployment's uploads and commands go over that same
    transport (a sibling channel), so a deploy costs one SSH handshake per board, and the lease's own
    connection still works after the deployment's sibling is closed."""
    from harness.rack import lease
    from harness.rack.ssh import Connection

    rack = load_rack(rack_file)
    opened = []
    real_open = Connection.open

    def counting_open(self):
        opened.append(self.board.name)
        return real_open(self)

    monkeypatch.setattr(Connection, "open", counting_open)
    dep = deploy(plan3, rack, force=True)
    assert sorted(opened) == sorted(b.name for b in dep.boards.values())
    opened.clear()
    with lease.RackLease([rack.boards[0]], "test") as held:
        with lease.shared_connection(rack.boards[0]) as sib:
            workdir = sib.remote_path(rack.boards[0].workdir)
            assert sib.exists(workdir)
        assert held.conns[rack.boards[0].name].exists(workdir)
    assert opened == [rack.boards[0].name]
    assert lease.shared_connection(rack.boards[0]) is None  # no lease held: nothing to share
    undeploy(rack)
