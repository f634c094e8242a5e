"""Leases under clock steps and faults, on a virtual rack: a board's wall clock stepped back after its holder
died, or forward while its holder works; a board without /proc/uptime; a dead holder on this machine; a full
board disk. Each test sets up the step or the fault and asserts what the next user sees."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.rack.lease import LEASE_FILE, LeaseHeld, RackLease
from harness.rack.rackfile import load_rack
from harness.rack.ssh import BoardError
from harness.rack.virtual_board import set_clock

REPO = Path(__file__).resolve().parents[2]

# a holder on "another machine": its identity names another boot, so only the board's clocks can tell its age
HOLDER = """
import sys, time
from harness.rack import lease
from harness.rack.rackfile import load_rack
if sys.argv[3] == "elsewhere":
    ident = lease._holder_identity()
    lease._holder_identity = lambda: dict(ident, host_boot="another-machine")
rack = load_rack(sys.argv[1])
lease.RackLease(rack.boards, "holder test", ttl=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(rack_file, ttl, where="elsewhere"):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(rack_file), str(ttl), where], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


def _homes(rack_file):
    rack = load_rack(rack_file)
    return [rack.virtual_state / b.name / "home" for b in rack.boards]


@pytest.fixture
def clocks(rack_file):
    """Step the rack's board clocks: clocks(offset_s, hide_proc); every board is set right again afterwards."""
    def step(offset_s=0.0, hide_proc=False):
        for h in _homes(rack_file):
            set_clock(h, offset_s, hide_proc)
    yield step
    step(0.0, False)


def _kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait()


@pytest.mark.parametrize("hide_proc", [False, True], ids=["uptime", "no-uptime"])
def test_a_board_clock_stepped_back_a_day_frees_a_dead_holders_boards_after_the_ttl(rack_file, clocks, hide_proc):
    """The holder (on another machine) dies; the boards' clocks then step back a day (a PYNQ-Z2 has no RTC
    battery). The next user waiting for the boards gets them after about the ttl, not after a day: by the
    boards' uptime, or, without /proc/uptime, by watching the lease not change (its negative age refused)."""
    rack = load_rack(rack_file)
    clocks(0.0, hide_proc)
    holder = _holder(rack_file, 3.0)
    _kill(holder)
    clocks(-86400.0, hide_proc)
    said = []
    t0 = time.monotonic()
    with RackLease(rack.boards, "next", wait=60, progress=said.append) as le:
        took = time.monotonic() - t0
        assert set(le.paths) == set(rack.names)
    assert any("expired" in s for s in said), said
    if hide_proc:
        assert any("judged by watching" in s for s in said) or any("unchanged while we watched" in s for s in said), said
    assert took < 60
    print(f"boards taken {took:.1f} s after the holder died and the clocks stepped back a day: {said[-1].strip()}")


def test_a_board_clock_stepped_forward_does_not_hand_a_living_holders_boards_to_another_user(rack_file, clocks):
    """The holder works (ttl 60 s: it refreshes every 15 s); the boards' clocks step an hour forward. By the
    boards' wall clocks its lease is an hour old; by their uptime it is seconds old: the next user is refused,
    naming the holder (before, it broke the lease and took the boards from a running bench)."""
    rack = load_rack(rack_file)
    holder = _holder(rack_file, 60.0)
    try:
        clocks(3600.0)
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"leased by .*:{holder.pid} since") as e:
            RackLease(rack.boards, "intruder").acquire()
        print(f"clock an hour forward, holder alive: refused in {time.monotonic() - t0:.1f} s: {e.value}")
        body = json.loads((_homes(rack_file)[0] / "splitrack" / LEASE_FILE).read_text())
        assert body["owner"].endswith(f":{holder.pid}")  # still the holder's lease
    finally:
        _kill(holder)
        clocks(0.0)
        RackLease(rack.boards, "cleanup", wait=120).acquire().release()


def test_a_dead_holder_on_this_machine_is_seen_at_once(rack_file):
    """A holder of this machine that died holding the boards (ttl 60 s) does not keep them for a minute: its
    pid is gone, and the next user takes them at once, saying why."""
    rack = load_rack(rack_file)
    holder = _holder(rack_file, 60.0, where="here")
    _kill(holder)
    said = []
    t0 = time.monotonic()
    with RackLease(rack.boards, "next", progress=said.append) as le:  # wait=0: no waiting at all
        assert set(le.paths) == set(rack.names)
        print(f"dead holder of this machine: boards taken in {time.monotonic() - t0:.1f} s: {said[0].strip()}")
    assert any("its holder, a process of this machine, has ended" in s for s in said), said


def test_a_living_holder_on_this_machine_is_not_taken_for_dead(rack_file):
    rack = load_rack(rack_file)
    holder = _holder(rack_file, 60.0, where="here")
    try:
        with pytest.raises(LeaseHeld, match=f":{holder.pid} since"):
            RackLease(rack.boards, "next").acquire()
    finally:
        _kill(holder)


def test_a_full_board_disk_is_named_not_taken_for_a_lease(rack_file):
    """A board whose disk is full: the lease file cannot be written. The error names the disk (before: the
    empty file it left read as 'leased by an unknown holder'), and no empty lease file stays behind."""
    rack = load_rack(rack_file)
    b = rack.boards[1]
    home = rack.virtual_state / b.name / "home"
    filler = home / "filler.bin"
    with open(filler, "wb") as f:
        f.truncate(2048 << 20)  # the board's whole disk (sparse: the virtual board counts sizes)
    try:
        t0 = time.monotonic()
        with pytest.raises(BoardError, match="no space left on the board while writing .*lease.json") as e:
            RackLease([b], "full").acquire()
        print(f"full disk: error in {time.monotonic() - t0:.1f} s: {e.value}")
        assert "\n" not in str(e.value) and b.name in str(e.value)
        assert not (home / "splitrack" / LEASE_FILE).exists()
    finally:
        filler.unlink()
