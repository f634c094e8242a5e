"""Deployment and health checks under faults of issue 24, on a virtual rack: a board that freezes while its
agent's secret is written, a rack file whose workdir changed under a running agent, and a board whose
`python`, `free` or `df` prints garbage. Each test sets up the fault and asserts the one-line outcome."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import time

import pytest

from harness.rack.deploy import DeployError, deploy, undeploy
from harness.rack.health import check_board, ping_board
from harness.rack.rackfile import Rack, load_rack
from harness.rack.ssh import Connection


def _board_pid(rack, name: str) -> int:
    rec = json.loads((rack.virtual_state / "rack.json").read_text())
    return next(p["pid"] for p in rec["pids"] if p["name"] == name)


def test_a_board_frozen_while_the_secret_is_written_gives_the_reason(plan3, rack_file, monkeypatch, sched_latency):
    """The board's SSH server freezes (SIGSTOP) as the deployment's secret goes up: the error names the board,
    the stage and why (no reply within the SFTP timeout: hung), never an empty reason."""
    rack = load_rack(rack_file)
    victim = rack.boards[1]
    board_pid = _board_pid(rack, victim.name)
    real = Connection.put_bytes

    def put_bytes(self, data, remote, *a, **k):
        if self.board.name == victim.name and remote.endswith("agent.secret.upload"):
            os.kill(board_pid, signal.SIGSTOP)
        return real(self, data, remote, *a, **k)

    monkeypatch.setattr(Connection, "put_bytes", put_bytes)
    t0 = time.monotonic()
    try:
        with pytest.raises(DeployError) as e:
            deploy(plan3, rack, force=True)
        took = time.monotonic() - t0
    finally:
        os.kill(board_pid, signal.SIGCONT)
    msg = str(e.value)
    print(f"board frozen while the secret is written: error after {took:.1f} s: {msg}")
    assert f"board {victim.name}, stage upload: the board's SSH server stopped answering while writing" in msg, msg
    assert "agent.secret.upload" in msg and "\n" not in msg
    assert took < sched_latency.bound(2 * 10.0 + 10.0, 40)  # the SFTP timeout (10 s) bounds it
    undeploy(rack)


def test_a_changed_workdir_stops_the_old_agent_on_the_port(plan3, rack_file):
    """A rack file's workdir changes while the agents of the old one run on the boards' data ports: the next
    deploy finds the old agent on the port (its folder, its pid), stops it since nobody leases its workdir,
    says so, and starts the new one (it used to fail naming the address)."""
    rack = load_rack(rack_file)
    first = deploy(plan3, rack)
    old = {p: pl.pid for p, pl in first.placed.items()}
    moved = Rack(rack.name, [dataclasses.replace(b, workdir="splitrack-moved") for b in rack.boards], rack.path,
                 rack.virtual_state)
    said = []
    try:
        t0 = time.monotonic()
        dep = deploy(plan3, moved, progress=said.append)
        print(f"changed workdir: deployed in {time.monotonic() - t0:.1f} s: " + " | ".join(
            s.strip() for s in said if "stopped the agent" in s)[:300])
        assert all(pl.pid != old[p] for p, pl in dep.placed.items())
        stops = [s for s in said if "stopped the agent of workdir" in s]
        assert len(stops) == len(plan3.partitions), said
        assert all("splitrack-moved" in s for s in stops)
        assert ping_board(moved.boards[0])["pid"] == dep.placed[plan3.ordered_partitions()[0].name].pid
    finally:
        undeploy(moved)


def _garbage(home, name: str, text: str):
    """Replace the virtual board's `name` (free, df) by a script printing `text`."""
    f = home.parent / (home.name + ".board") / "bin" / name
    f.write_text("#!/bin/sh\nprintf '%s'\n" % text.replace("'", ""))
    f.chmod(f.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("tool,text,words", [
    ("free", "Mem: lots of it\\n", "`free -b` answered a Mem: line this check cannot read (Mem: lots of it)"),
    ("free", "", "`free -b` gave no Mem: line"),
    ("df", "Filesystem\\nvirtual-sd x y many 5%% /\\n", "gave no answer to read"),
    ("python", "Python three point eight\\n", "does not run a short script (Python three point eight)"),
])
def test_rack_check_of_a_board_printing_garbage_is_a_reason_not_a_traceback(rack_file, tmp_path, tool, text, words):
    rack = load_rack(rack_file)
    b = rack.boards[2]
    home = rack.virtual_state / b.name / "home"
    bindir = home.parent / (home.name + ".board") / "bin"
    saved = {n: (bindir / n).read_text() for n in ("free", "df")}
    try:
        if tool == "python":
            fake = tmp_path / "python"
            fake.write_text("#!/bin/sh\nprintf '%s'\n" % text)
            fake.chmod(0o755)
            b = dataclasses.replace(b, python=str(fake))
        else:
            _garbage(home, tool, text)
        h = check_board(b, timeout=5)
    finally:
        for n, body in saved.items():
            (bindir / n).write_text(body)
    assert not h.ok and words in h.reason, h.reason
    assert "\n" not in h.line()
