"""Deployment faults that must end in a true, bounded, one-line error and leave the boards in a state the
error describes: a name that would be shell, a frozen SSH server, an agent that cannot start, a damaged
cache, a failed upload; and a run or bench that loses an agent keeps every frame it received."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.agent.files import MODULE as AGENT_MODULE
from harness.rack.agent_control import agent_stale_state
from harness.rack.deploy import DeployError, deploy, undeploy
from harness.rack.health import ping_board
from harness.rack.rackfile import Rack, load_rack
from harness.rack.ssh import Connection
from splitting.errors import UserError

REPO = Path(__file__).resolve().parents[2]




def _board_pid(rack: Rack, name: str) -> int:
    rec = json.loads((rack.virtual_state / "rack.json").read_text())
    return next(p["pid"] for p in rec["pids"] if p["name"] == name)


def _renamed(plan, old: str, new: str, root: Path):
    """The plan with partition `old` renamed `new`, built in memory: load-time name validation is bypassed
    on purpose, to test that the deployment layer runs nothing a name says."""
    from splitting.plan import Plan

    shutil.copytree(plan.root, root)
    shutil.move(str(root / old), str(root / new))
    p = Plan.load(root)
    part = p.partitions.pop(old)
    p.partitions[new] = dataclasses.replace(part, name=new)
    for s in p.stages:
        s.partitions = [new if n == old else n for n in s.partitions]
    p.links = [dataclasses.replace(c, src=new if c.src == old else c.src, dst=new if c.dst == old else c.dst)
               for c in p.links]
    return p


def test_partition_name_that_is_shell_runs_nothing(plan3, rack_file, tmp_path, monkeypatch):
    """Two fences: the host refuses such a plan before hls4ml (whose build script hands the project name to a
    shell on this machine) or any board sees it; and the board side starts an agent under that name taken
    literally (its output file is named by it), running nothing it says."""
    from harness.rack.agent_control import start_agent
    from harness.rack.ssh import Connection
    from splitting.errors import UserError

    rack = load_rack(rack_file)
    marker = "X" + tmp_path.name[-8:]
    evil = f"s1$(touch {marker})"
    plan = _renamed(plan3, "s1", evil, tmp_path / "evil")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="not a valid name"):
        deploy(plan, rack, force=True)
    dep = deploy(plan3, rack, force=True)
    b = dep.boards["s1"]
    try:
        undeploy(rack)  # the board keeps s1's files; no agent runs
        with Connection(b) as conn:
            pid = start_agent(conn, b, evil)  # the name reaches the board's start command
        assert pid > 0
        home = rack.virtual_state / b.name / "home"
        assert (home / "splitrack" / "part" / f"agent-{evil}.out").is_file()
        found = [p for p in [*rack.virtual_state.rglob(marker), *tmp_path.rglob(marker), *REPO.glob(marker)]]
        assert found == [], found
    finally:
        undeploy(rack)


def test_frozen_ssh_server_mid_upload_is_a_clear_error_within_30s(plan3, rack_file, monkeypatch):
    rack = load_rack(rack_file)
    first = deploy(plan3, rack)
    victim = first.boards["s1"]
    old_pid = first.placed["s1"].pid
    board_pid = _board_pid(rack, victim.name)
    real_put, calls = Connection.put, []

    def put(self, local, remote, stage="upload"):
        if self.board.name == victim.name:
            calls.append(remote)
            if len(calls) == 2:  # the first file went up; the board's SSH server freezes now
                os.kill(board_pid, signal.SIGSTOP)
        return real_put(self, local, remote, stage)

    monkeypatch.setattr(Connection, "put", put)
    t0 = time.monotonic()
    try:
        with pytest.raises(DeployError) as e:
            deploy(plan3, rack, force=True)
        took = time.monotonic() - t0
    finally:
        os.kill(board_pid, signal.SIGCONT)
    msg = str(e.value)
    print(f"frozen SSH server mid-upload: error after {took:.1f} s: {msg}")
    assert took < 30
    assert f"board {victim.name}, stage upload: the board's SSH server stopped answering" in msg
    assert "\n" not in msg
    # the upload went to staging names: the board's previous agent still runs and answers
    h = ping_board(victim)
    assert h["pid"] == old_pid and h["partition"] == "s1"
    undeploy(rack)


def test_agent_that_exits_at_start_is_reported_at_once_with_its_own_output(plan3, rack_file):
    rack = load_rack(rack_file)
    deploy(plan3, rack)  # a working agent first: its log must not be quoted for the next one
    # a python that passes deploy's checks (it runs their probe) but cannot run the agent
    with Connection(rack.boards[1]) as c:
        fake = c.remote_path("python-without-modules")
        c.put_bytes(b'#!/bin/sh\ncase "$1" in -m) echo "$0: this python runs no module ($2)" >&2; exit 3;; esac\n'
                    b'exec python3 "$@"\n', fake, mode=0o755)
    bad = Rack(rack.name, [dataclasses.replace(b, python=fake) if i == 1 else b
                           for i, b in enumerate(rack.boards)], rack.path, rack.virtual_state)
    t0 = time.monotonic()
    with pytest.raises(DeployError) as e:
        deploy(plan3, bad, force=True)
    took = time.monotonic() - t0
    msg = str(e.value)
    print(f"agent that exits at start: error after {took:.1f} s: {msg}")
    assert f"board {rack.boards[1].name}, stage agent-start: agent of s1 exited at start" in msg
    assert f"python-without-modules: this python runs no module ({AGENT_MODULE})" in msg
    assert "listening" not in msg  # its own output, not the last agent's log
    assert took < 25  # not the 30 s start timeout
    undeploy(rack)


def _cache_copy(plan, name, tmp_path):
    from splitting.hls import ARTIFACT, project_dir

    src = project_dir(plan, name)
    dst = tmp_path / "cache" / src.name
    shutil.copytree(src, dst)
    meta = json.loads((dst / ARTIFACT).read_text())
    return dst, dst / meta["library"]


def test_damaged_or_missing_cached_library_is_refused(plan3, rack_file, tmp_path, monkeypatch):
    import splitting.hls as hls

    rack = load_rack(rack_file)
    real = hls.project_dir
    folder, lib = _cache_copy(plan3, "s1", tmp_path)
    monkeypatch.setattr(hls, "project_dir", lambda plan, name: folder if name == "s1" else real(plan, name))
    # an entry made before checksums were recorded gets its checksum at first use
    meta = json.loads((folder / hls.ARTIFACT).read_text())
    meta.pop("library_sha256", None)
    (folder / hls.ARTIFACT).write_text(json.dumps(meta))
    deploy(plan3, rack)
    assert json.loads((folder / hls.ARTIFACT).read_text())["library_sha256"]
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damaged mid-file
    lib.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        deploy(plan3, rack, force=True)
    msg = str(e.value)
    assert f"the cached library {lib} is damaged" in msg and "rebuild" in msg and "\n" not in msg
    lib.unlink()
    with pytest.raises(UserError, match=f"the library {lib} is missing from the hls4ml cache; remove"):
        deploy(plan3, rack)
    undeploy(rack)


def test_new_library_manifest_records_the_checksum(tmp_path):
    """The sha256 goes into the manifest when the library is built (a fresh compile into an empty cache)."""
    import hashlib

    from splitting.hls import ARTIFACT, compiled
    from splitting.plan import Plan
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    write_plan(plan, models, tmp_path / "p")
    plan = Plan.load(tmp_path / "p")
    p = plan.partitions["s2"]  # the smallest partition: a quick compile
    folder = compiled(plan.path(p.model_file), p.weights_sha256, p.hls, plan.hls_defaults, "sr_s2",
                      cache=tmp_path / "cache")
    meta = json.loads((folder / ARTIFACT).read_text())
    assert meta["library_sha256"] == hashlib.sha256((folder / meta["library"]).read_bytes()).hexdigest()


def test_stale_agent_state_is_named():
    assert agent_stale_state({"queues": [0, 0], "waiting_for_parts": 0}) is None
    assert agent_stale_state({"queues": [3, 1], "waiting_for_parts": 0}) == "4 queued frame(s)"
    assert "2 frame(s) waiting for parts" in agent_stale_state({"queues": [0, 0], "waiting_for_parts": 2})
    assert agent_stale_state({"queues": [0, 0], "stale": True}) == "stale session state"


def _kill_agent_when(proc, rack, board: str, line_has: str, after: float = 0.5) -> list:
    """Read the command's stdout; once a line contains `line_has`, kill the agent of `board` (SIGKILL).
    Returns the lines read (the reader keeps reading to the end), its thread, and [time of the kill]."""
    lines, when = [], []

    def watch():
        killed = False
        for line in proc.stdout:
            lines.append(line)
            if not killed and line_has in line:
                time.sleep(after)
                part = rack.virtual_state / board / "home" / "splitrack" / "part"
                for f in part.glob("agent-*.pid"):
                    os.kill(int(f.read_text().strip()), signal.SIGKILL)
                killed = True
                lines.append("<killed>\n")
                when.append(time.monotonic())

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return lines, t, when


def test_agent_killed_mid_run_leaves_run_json_with_the_frames(plan3, rack_file, tmp_path):
    import numpy as np

    rack = load_rack(rack_file)
    deploy(plan3, rack)
    out = tmp_path / "runout"
    data = tmp_path / "frames.npy"
    np.save(data, np.random.default_rng(1).uniform(0, 16, (3000, 64)).astype(np.float32))
    p = subprocess.Popen([sys.executable, "-m", "harness.cli.commands", "run", str(plan3.root), "--boards", str(rack_file),
                          "--data", str(data), "--rate", "200", "--in-flight", "4", "--timeout", "3",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines, t, when = _kill_agent_when(p, rack, rack.boards[1].name, "frames sent")
    err = p.stderr.read()
    assert p.wait(timeout=300) == 2, "".join(map(str, lines)) + err
    ended = time.monotonic()
    t.join()
    assert "<killed>\n" in lines
    doc = json.loads((out / "run.json").read_text())
    s = doc["summary"]
    print(f"run killed mid-stream: exit {ended - when[0]:.1f} s after the kill (JSON and plot written), "
          f"{s['frames_received']} frames kept; {err.strip()}")
    assert s["complete"] is False and s["error"] and "s1" in s["error"]
    assert 0 < s["frames_received"] < 3000 and len(doc["frames"]) == s["frames_received"]
    assert s["emulation_mismatches"] == 0  # what came back before the fault is right, and checked
    assert (out / "run.png").stat().st_size > 0
    assert "marked incomplete" in err and len(err.strip().splitlines()) == 1
    undeploy(rack)


def test_agent_killed_mid_bench_leaves_bench_json_with_the_frames(plan3, rack_file, tmp_path):
    rack = load_rack(rack_file)
    deploy(plan3, rack)
    out = tmp_path / "bench.json"
    p = subprocess.Popen([sys.executable, "-m", "harness.cli.commands", "bench", str(plan3.root), "--boards", str(rack_file),
                          "--frames", "3000", "--no-cpu", "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines, t, when = _kill_agent_when(p, rack, rack.boards[2].name, "single frames", after=2.0)
    err = p.stderr.read()
    assert p.wait(timeout=300) == 2, "".join(map(str, lines)) + err
    ended = time.monotonic()
    t.join()
    doc = json.loads(out.read_text())
    got = sum(len(v) for v in doc["frames"].values())
    print(f"bench killed mid-run: exit {ended - when[0]:.1f} s after the kill (JSON and plot written), "
          f"{got} frames kept; {err.strip()}")
    assert doc["complete"] is False and doc["error"] and doc["plan_hash"] == plan3.hash
    assert 0 < got < 3000 and doc["frames_received"] == {m: len(v) for m, v in doc["frames"].items()}
    assert all(f["t_recv"] > f["t_send"] and f["stamps"] for v in doc["frames"].values() for f in v)
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(err.strip().splitlines()) == 1
    undeploy(rack)


class _ReapedBetweenOpenAndRead:
    """A board connection on which the agent's /proc/PID/stat opens but fails to read, the way OpenSSH's
    sftp-server answers when the process is reaped in between (a bare SFTP 'Failure')."""

    def __init__(self, gone: bool):
        self.gone = gone
        self.reads = 0

    def read_text(self, remote, stage="read"):
        from harness.rack.ssh import BoardError

        self.reads += 1
        raise BoardError("b0", stage, f"reading {remote} failed: Failure")

    def exists(self, remote, stage="read"):
        return not self.gone


def test_agent_reaped_while_its_stat_is_read_counts_as_stopped_and_other_read_failures_still_fail():
    from harness.rack.agent_control import alive as _alive
    from harness.rack.ssh import BoardError

    assert _alive(_ReapedBetweenOpenAndRead(gone=True), 4242) is False
    still_there = _ReapedBetweenOpenAndRead(gone=False)
    with pytest.raises(BoardError, match="Failure"):
        _alive(still_there, 4242)
    assert still_there.reads == 2


def test_agent_that_has_not_written_yet_is_never_taken_for_the_earlier_agent_s_ready_line(plan3, rack_file,
                                                                                          monkeypatch):
    """The output file of the previous agent holds its ready line; the shell truncates that file in the
    background child, possibly after deploy has looked at it. Here the child never gets to it (the start
    command is replaced by one that writes nothing and exits): start_agent must report that, not return the
    previous agent's pid."""
    from harness.agent import wire
    from harness.rack.agent_control import BoardError, start_agent

    rack = load_rack(rack_file)
    dep = deploy(plan3, rack, force=True)
    b = dep.boards["s1"]
    part = rack.virtual_state / b.name / "home" / "splitrack" / "part"
    real = Connection.start_background

    def silent(self, argv, cwd, output, stage="start", timeout=20.0):
        return real(self, ["sleep", "0.2"], cwd, "/dev/null", stage, timeout)

    try:
        undeploy(rack)
        assert '"ready"' in (part / "agent-s1.out").read_text()  # what the agent that ran wrote
        monkeypatch.setattr(Connection, "start_background", silent)
        with Connection(b) as conn, pytest.raises(BoardError, match="exited at start: no output"):
            start_agent(conn, b, "s1", wire.read_secret(str(part / "agent.secret")))
    finally:
        monkeypatch.undo()
        undeploy(rack)


def test_agent_runs_as_a_module_whose_bytecode_the_board_caches(plan3, rack_file):
    """Deploy starts `python3 -m harness.agent part/agent.json` in the workdir: the agent's package sits at its
    package path there, its bytecode is cached in the package's __pycache__ like that of the modules it imports
    (a script would be compiled at every start), and its health check answers as usual."""
    rack = load_rack(rack_file)
    dep = deploy(plan3, rack, force=True)
    try:
        b = dep.boards["s0"]
        home = rack.virtual_state / b.name / "home" / "splitrack"
        cached = {p.name.split(".")[0] for p in (home / "harness" / "agent" / "__pycache__").glob("*.pyc")}
        assert {"__main__", "agent", "agent_config", "wire", "backends"} <= cached, cached
        assert {"contract"} <= {p.name.split(".")[0] for p in (home / "splitting" / "__pycache__").glob("*.pyc")}
        assert "overlay" not in cached  # a virtual board's agent never loads it
        h = ping_board(b)
        assert (h["partition"], h["pid"]) == ("s0", dep.placed["s0"].pid)
    finally:
        undeploy(rack)
