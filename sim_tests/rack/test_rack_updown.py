"""`rack up` and `rack down` of a virtual rack: no port handed out twice, a failed `rack up` leaves no board
running wherever it fails, and `rack down` stops every board (frozen ones too) under one deadline."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from harness.rack import virtual_rack as vr
from harness.rack.rackfile import RackError
from harness.rack.virtual_board import home_processes
from splitting.errors import UserError


def _quiet(s):
    pass


def test_ports_are_distinct_when_the_kernel_hands_one_out_again(tmp_path, monkeypatch):
    real = vr._os_port
    drawn = []

    def twice(host):  # every port the kernel gives is given a second time, as a released port 0 port can be
        if drawn and len(drawn) % 2 == 1:
            p = drawn[-1]
        else:
            p = real(host)
        drawn.append(p)
        return p

    monkeypatch.setattr(vr, "_os_port", twice)
    rack = vr.rack_up(3, tmp_path / "rack.toml", state=tmp_path / "s", progress=_quiet)
    try:
        ports = [b.port for b in rack.boards] + [b.data_port for b in rack.boards]
        assert len(set(ports)) == 6, ports
        assert len(drawn) > 3  # the SSH ports' repeats were drawn and refused
        for b in rack.boards:
            socket.create_connection((b.host, b.port), timeout=5).close()
    finally:
        assert vr.rack_down(tmp_path / "rack.toml") == 3


def test_data_ports_lie_below_the_ephemeral_range_and_are_distinct(tmp_path, monkeypatch):
    """A data port is listened on only once an agent runs: until then any outgoing connection could take it
    as its local port if it lay in the kernel's ephemeral range. Drawn below it, never twice (a random draw
    that repeats is refused), and never one that is bound already."""
    low = vr._ephemeral_low()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0 if low <= vr.DATA_PORTS_LOW + 1000 else vr.DATA_PORTS_LOW + 7))
        held = busy.getsockname()[1]
        draws = iter([held, held] + list(range(vr.DATA_PORTS_LOW + 100, vr.DATA_PORTS_LOW + 200)))

        class Repeating:  # the first draws: a bound port, then the same port again
            def randint(self, a, b):
                return next(draws)

        monkeypatch.setattr("random.SystemRandom", Repeating)
        taken = set()
        ports = [vr._data_port("127.0.0.1", taken) for _ in range(3)]
    if low <= vr.DATA_PORTS_LOW + 1000:
        pytest.skip(f"this machine's ephemeral range starts at {low}: data ports are the kernel's")
    assert held not in ports and len(set(ports)) == 3 and all(p < low for p in ports), (ports, held, low)
    assert set(ports) <= taken


def _nothing_left(procs, state):
    for p in procs:
        assert not vr._ours(p), f"{p.name} (pid {p.pid}) still runs"
        assert not home_processes(p.home)
    assert not state.exists()


@pytest.mark.parametrize("where", ["board-ready", "rack-file"])
def test_a_failed_rack_up_leaves_no_board_running(tmp_path, monkeypatch, where):
    spawned = []
    spawn = vr._spawn_board

    def recording(*a, **kw):
        st = spawn(*a, **kw)
        spawned.append(vr._board_process(st))
        return st

    monkeypatch.setattr(vr, "_spawn_board", recording)
    if where == "board-ready":
        finish = vr._finish_board

        def third_fails(st, *a, **kw):
            if st.name == "vpynq2":
                raise UserError("virtual board vpynq2 did not start (test)")
            return finish(st, *a, **kw)

        monkeypatch.setattr(vr, "_finish_board", third_fails)
        err = UserError
    else:
        def collision(*a, **kw):  # what a port collision looked like: the rack file refused
            raise RackError("port 1234 also used by board 'vpynq1' (test)")

        monkeypatch.setattr(vr, "write_rack", collision)
        err = RackError
    with pytest.raises(err):
        vr.rack_up(4, tmp_path / "rack.toml", state=tmp_path / "s", progress=_quiet)
    assert len(spawned) == 4
    _nothing_left(spawned, tmp_path / "s")
    assert not (tmp_path / "rack.toml").exists()


def test_rack_down_stops_every_board_at_once_frozen_ones_too(tmp_path):
    rack = vr.rack_up(4, tmp_path / "rack.toml", state=tmp_path / "s", progress=_quiet)
    procs = [vr.BoardProcess(**p) for p in json.loads((rack.virtual_state / "rack.json").read_text())["pids"]]
    os.kill(procs[1].pid, signal.SIGSTOP)  # a frozen board (as the fault tests make) must go too
    t0 = time.monotonic()
    assert vr.rack_down(tmp_path / "rack.toml") == 4
    assert time.monotonic() - t0 < 10
    _nothing_left(procs, tmp_path / "s")
    assert vr.rack_down(tmp_path / "rack.toml") == 0  # already stopped


def test_stop_boards_kills_what_does_not_end_in_time(tmp_path):
    rack = vr.rack_up(2, tmp_path / "rack.toml", state=tmp_path / "s", progress=_quiet)
    procs = [vr.BoardProcess(**p) for p in json.loads((rack.virtual_state / "rack.json").read_text())["pids"]]
    try:
        assert vr.stop_boards(procs, timeout=0.0) == []  # no grace at all: SIGKILL, then checked gone
        for p in procs:
            assert not vr._ours(p)
    finally:
        vr.rack_down(tmp_path / "rack.toml")


def test_boards_forked_by_the_zygote_are_separate_processes_each_stoppable_alone(tmp_path):
    """`rack up` forks its boards from one start-up process (virtual_board.zygote), which has ended when
    `rack up` returns; every board is still its own process in its own session, answers SSH on its own,
    and stopping one leaves the others serving."""
    vr.rack_up(3, tmp_path / "rack.toml", state=tmp_path / "state", progress=_quiet)
    try:
        procs = [vr.BoardProcess(**p) for p in json.loads((tmp_path / "state" / "rack.json").read_text())["pids"]]
        assert len({p.pid for p in procs}) == 3
        assert len({os.getsid(p.pid) for p in procs}) == 3 and all(os.getsid(p.pid) == p.pid for p in procs)
        assert not [int(d) for d in os.listdir("/proc") if d.isdigit() and _is_zygote(int(d), tmp_path / "state")]
        vr.stop_board(procs[0])
        assert not vr._ours(procs[0])
        rack = vr.load_rack(tmp_path / "rack.toml")
        for b in rack.boards[1:]:
            assert vr._ssh_ready(b.host, b.port, 5.0), b.name
    finally:
        assert vr.rack_down(tmp_path / "rack.toml") == 3
    assert not any(vr._ours(p) for p in procs)


def _is_zygote(pid: int, state) -> bool:
    """A zygote process runs in the rack's state folder (its boards in their homes)."""
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return b"--zygote" in cmd and cwd == str(state.resolve())
