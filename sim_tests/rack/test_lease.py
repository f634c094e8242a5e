"""Leases held on the boards themselves: one user at a time per board, across processes (and machines)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.rack.lease import LEASE_FILE, LeaseHeld, RackLease, holds
from harness.rack.rackfile import load_rack
from splitting.errors import UserError

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from harness.rack import lease
from harness.rack.lease import RackLease
from harness.rack.rackfile import load_rack
if sys.argv[3:] == ["elsewhere"]:  # as a holder on another machine: only the lease's expiry frees the boards
    ident = lease._holder_identity()
    lease._holder_identity = lambda: dict(ident, host_boot="another-machine")
rack = load_rack(sys.argv[1])
RackLease(rack.boards, "holder test", ttl=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""




def _holder(rack_file, ttl, *where):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(rack_file), str(ttl), *where], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


def _lease_file(rack_file, board=0) -> Path:
    rack = load_rack(rack_file)
    return rack.virtual_state / rack.boards[board].name / "home" / "splitrack" / LEASE_FILE


def test_second_user_gets_one_line_naming_the_holder(rack_file):
    rack = load_rack(rack_file)
    first = RackLease(rack.boards, "first user").acquire()
    try:
        assert all(holds(b) for b in rack.boards)
        body = json.loads(_lease_file(rack_file).read_text())
        assert body["owner"] == first.owner and body["purpose"] == "first user" and body["since"].endswith("Z")
        # another process (as another user would be) is refused, in one line naming the holder and since when
        r = subprocess.run([sys.executable, "-c", HOLDER, str(rack_file), "60"], capture_output=True, text=True,
                           cwd=REPO, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert r.returncode != 0 and "LeaseHeld" in r.stderr
        msg = r.stderr.strip().splitlines()[-1]
        assert f"leased by {first.owner} since {body['since']}" in msg and "first user" in msg and "--wait" in msg
    finally:
        first.release()
    assert not _lease_file(rack_file).exists() and not any(holds(b) for b in rack.boards)


def test_cli_deploy_refused_exit_2_then_waits(rack_file, plan3):
    fc_plan = plan3
    # a holder on another machine (its death is seen by the expiry, after a wait), whose ttl outlasts a CLI's
    # start on a loaded machine: the deploy below must find it still held, and wait
    holder = _holder(rack_file, 15.0, "elsewhere")
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "deploy", str(fc_plan.root), "--boards",
                            str(rack_file)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "is leased by" in lines[0] and f":{holder.pid} since " in lines[0], r.stderr
        assert "uploaded" not in r.stdout  # refused before anything on any board changed
        print(f"deploy refused in {time.monotonic() - t0:.1f} s: {lines[0]}")
        # --wait: the holder goes away while we wait, and the deploy goes through
        holder.kill()  # dies holding the lease: it expires 15 s after its last refresh
        holder.wait()
        r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "deploy", str(fc_plan.root), "--boards",
                            str(rack_file), "--wait", "120"], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "waiting up to 120 s" in r.stdout and "expired" in r.stdout
    finally:
        holder.kill()
        holder.wait()
        from harness.rack.deploy import undeploy
        undeploy(load_rack(rack_file))


def test_lease_of_a_dead_holder_expires(rack_file):
    rack = load_rack(rack_file)
    holder = _holder(rack_file, 2.0, "elsewhere")  # (a dead holder of this machine is seen at once)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with pytest.raises(LeaseHeld, match=f"leased by .*:{holder.pid} since"):
        RackLease(rack.boards, "next").acquire()  # expiry is 2 s after its last refresh: not yet
    said = []
    with RackLease(rack.boards, "next", wait=60, progress=said.append) as le:
        assert le.paths and json.loads(_lease_file(rack_file).read_text())["owner"] == le.owner
    assert any("expired" in s for s in said), said


def test_holder_refreshes_past_the_ttl(rack_file):
    rack = load_rack(rack_file)
    holder = _holder(rack_file, 1.0)
    try:
        time.sleep(3.5)  # more than three ttls: only refreshes keep it
        with pytest.raises(LeaseHeld):
            RackLease(rack.boards, "next").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_two_boards_that_are_one_folder_are_refused(rack_file):
    rack = load_rack(rack_file)
    b = rack.boards[0]
    from harness.rack.ssh import connect
    with connect(b) as c:
        absolute = c.home + "/splitrack"
    alias = dataclasses.replace(b, name="alias", workdir=absolute)  # "splitrack" vs "/home/.../splitrack"
    with pytest.raises(UserError, match=f"boards {b.name} and alias of the rack file are one folder"):
        RackLease([b, alias], "t", wait=30).acquire()  # (an expired lease of an earlier test is broken)
    assert not _lease_file(rack_file).exists()  # what was taken is given back


class _RacingSftp:
    """An SFTP client whose exclusive create fails the way SFTP v3 reports an existing file (a plain failure),
    while the file is gone again when looked at: its owner removed it in between (`fails` times), or for good."""

    def __init__(self, fails):
        self.fails = fails
        self.written = None

    def open(self, remote, mode):
        import io

        if self.fails:
            self.fails -= 1
            raise IOError("Failure")
        sftp = self

        class _File(io.BytesIO):
            def close(self):
                sftp.written = self.getvalue()

        return _File()

    def stat(self, remote):
        raise FileNotFoundError(remote)


def _racing_connection(fails):
    from harness.rack.rackfile import Board
    from harness.rack.ssh import Connection

    c = Connection(Board(name="b0", host="127.0.0.1", kind="virtual-pynq-z2", key=Path("/nonexistent")))
    c._sftp = _RacingSftp(fails)
    return c


def test_exclusive_create_that_meets_a_lease_removed_meanwhile_tries_again():
    """Found by make test-busy: two deploys at once; the loser's exclusive create met the winner's lease, which
    was gone when it looked (the winner had given it back), and the deploy failed with 'File exists' instead of
    trying again."""
    from harness.rack.ssh import BoardError

    c = _racing_connection(fails=2)
    c.put_bytes(b"lease", "/x/lease.json", stage="lease", exclusive=True)
    assert c._sftp.written == b"lease"
    with pytest.raises(BoardError, match="stage lease: writing /x/lease.json failed: Failure"):
        _racing_connection(fails=99).put_bytes(b"lease", "/x/lease.json", stage="lease", exclusive=True)
