"""A shared rack through labgrid's real coordinator and exporter on loopback (4 virtual boards): places made
and updated, leases that never share a board and give everything back on timeout, health tags that keep a
bad board from every runner, a dead runner's boards taken back, and the pytest plugin leasing through it."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.rack import lab_lease
from harness.cli.lab import status_rows, status_text
from harness.rack.lab_export import apply_places
from harness.rack.lab_lease import LabLease, check_and_tag, lab_boards, mark_health
from harness.rack.lab_client import LabClient, LabError
from harness.rack.rackfile import Rack
from lab_rig import LabRig

N = 4


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = LabRig(tmp_path_factory.mktemp("lab"), N)
    yield r
    r.stop()


@pytest.fixture
def client(rig):
    c = LabClient(rig.address)
    yield c
    c.close()


def _free(rig):
    """Every place unlocked and unreserved (what each test must leave behind)."""
    rows = status_rows(rig.client, {"rack": "virtual"})
    return all(r["held by"] == "-" for r in rows) and len(rows) == N


def test_places_are_matched_tagged_and_updated_never_duplicated(rig):
    places = rig.client.places()
    assert sorted(places) == [f"virtual-vpynq{i}" for i in range(N)]
    p = places["virtual-vpynq1"]
    assert {k: p.tags[k] for k in ("rack", "kind", "board", "pynq_version", "health")} == {
        "rack": "virtual", "kind": "virtual-pynq-z2", "board": "vpynq1", "pynq_version": "3.0.1", "health": "ok"}
    assert [repr(m) for m in p.matches] == ["*/vpynq1/*"]
    lines = apply_places(rig.client, rig.rack, progress=None)  # second run: nothing to do
    assert all(line.endswith("up to date") for line in lines), lines
    # a changed inventory updates the place in place
    changed = Rack(rig.rack.name, list(rig.rack.boards), rig.rack.path)
    changed.boards[1] = dataclasses.replace(changed.boards[1], pynq_version="3.1.0")
    lines = apply_places(rig.client, changed, progress=None)
    assert lines[1] == "virtual-vpynq1: tags pynq_version=3.1.0"
    places = rig.client.places()
    assert len(places) == N and [repr(m) for m in places["virtual-vpynq1"].matches] == ["*/vpynq1/*"]
    apply_places(rig.client, rig.rack, progress=None)
    assert rig.client.places()["virtual-vpynq1"].tags["pynq_version"] == "3.0.1"


def test_boards_come_from_the_acquired_resources(rig, client):
    lease = LabLease(client, rig.lab, N, timeout=60)
    try:
        assert sorted(b.name for b in lease.boards) == sorted(rig.rack.names)
        for b in lease.boards:  # the endpoints labgrid handed over are the rack file's, key from [defaults]
            want = rig.rack.board(b.name)
            assert (b.host, b.port, b.data_port, b.user, b.kind) == (want.host, want.port, want.data_port,
                                                                     want.user, want.kind)
            assert b.key == want.key and b.known_hosts == want.known_hosts
        rig.client.sync()  # another client's view: current once it has every update the coordinator sent
        places = rig.client.places()
        for name in lease.places:
            assert places[name].acquired == client.name
            assert len(places[name].acquired_resources) == 2  # ssh and agent
    finally:
        lease.release()
    assert _free(rig)


def test_two_runners_never_share_a_board_and_timeout_gives_everything_back(rig, client):
    other = LabClient(rig.address)
    a = LabLease(client, rig.lab, 2, timeout=60)
    try:
        b = LabLease(other, rig.lab, 2, timeout=60)
        assert not set(a.places) & set(b.places)
        text = status_text(rig.client, {"rack": "virtual"})
        assert text.count(client.name) == 2 and text.count(other.name) == 2
        t0 = time.monotonic()
        with pytest.raises(LabError) as e:
            LabLease(other, rig.lab, 1, timeout=3)
        assert "could not lease 1 board(s)" in str(e.value) and client.name in str(e.value)
        assert time.monotonic() - t0 < 60
        # nothing of the failed attempt is left: no reservation beyond b's two, no extra lock
        assert len([r for r in other.reservations() if r.owner == other.name]) == 2
        assert sum(p.acquired == other.name for p in rig.client.places().values()) == 2
        b.release()
    finally:
        a.release()
        other.close()
    assert _free(rig)
    assert rig.client.reservations() == []


def test_an_unhealthy_board_is_never_handed_out_and_its_reason_shows(rig, client):
    mark_health(rig.client, "virtual-vpynq2", False, "fan failed (test)")
    try:
        lease = LabLease(client, rig.lab, N - 1, timeout=60)
        try:
            assert "virtual-vpynq2" not in lease.places
            with LabClient(rig.address) as other, pytest.raises(LabError) as e:
                LabLease(other, rig.lab, 1, timeout=3)
            assert "virtual-vpynq2 (fan failed (test))" in str(e.value)
        finally:
            lease.release()
        with pytest.raises(LabError):  # all four: one is bad, so never
            LabLease(client, rig.lab, N, timeout=3)
        row = next(r for r in status_rows(rig.client) if r["place"] == "virtual-vpynq2")
        assert row["health"] == "bad: fan failed (test)"
    finally:
        mark_health(rig.client, "virtual-vpynq2", True)
    assert _free(rig)


def test_health_check_tags_a_hung_board_and_clears_it_when_it_answers_again(rig):
    from harness.rack.health import check_rack

    pid = next(p["pid"] for p in json.loads((rig.rack.virtual_state / "rack.json").read_text())["pids"]
               if p["name"] == "vpynq3")

    def check(boards):
        return check_rack(Rack("virtual", boards), timeout=2.0)

    os.kill(pid, signal.SIGSTOP)  # the board's SSH server hangs: it accepts and never speaks
    try:
        boards, health = check_and_tag(rig.client, rig.lab, check)
        assert not health["vpynq3"].ok
        bad = {lb.place: lb.tags.get("health_reason") for lb in boards if not lb.healthy}
        assert list(bad) == ["virtual-vpynq3"] and "SSH" in bad["virtual-vpynq3"]
    finally:
        os.kill(pid, signal.SIGCONT)
    boards, health = check_and_tag(rig.client, rig.lab, check)
    assert health["vpynq3"].ok
    assert all(lb.healthy for lb in boards) and "health_reason" not in rig.client.places()["virtual-vpynq3"].tags


def test_a_dead_runners_boards_are_taken_back(rig, client, monkeypatch, tmp_path):
    # a runner in its own process takes two boards, then is killed without a word
    code = textwrap.dedent(f"""
        import sys, time
        from harness.rack.rackfile import load_rack
        from harness.rack.lab_client import LabClient
        from harness.rack.lab_lease import LabLease
        lab = load_rack({str(rig.lab_file)!r})
        lease = LabLease(LabClient(lab.lab.coordinator), lab, 2, timeout=60)
        print(" ".join(lease.places), flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        held = p.stdout.readline().split()
        assert len(held) == 2
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    places = rig.client.places()
    assert all(places[h].acquired for h in held)  # labgrid keeps a lock after its client is gone
    monkeypatch.setattr(lab_lease, "STALE_S", 3.0)  # (45 s in use; the slow test waits for the real figure)
    lease = LabLease(client, rig.lab, N, timeout=60)
    try:
        assert set(held) <= set(lease.places)
    finally:
        lease.release()
    assert _free(rig)


def test_a_person_s_lock_is_never_taken_back(rig, client, monkeypatch):
    """A place locked with labgrid-client (no splitrack heartbeat) stays with that person."""
    r = subprocess.run([sys.executable, "-m", "labgrid.remote.client",
                        "-x", rig.address, "-p", "virtual-vpynq0", "lock"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    monkeypatch.setattr(lab_lease, "STALE_S", 0.0)
    try:
        lease = LabLease(client, rig.lab, N - 1, timeout=30)
        assert "virtual-vpynq0" not in lease.places
        lease.release()
        assert rig.client.places()["virtual-vpynq0"].acquired
    finally:
        subprocess.run([sys.executable, "-m", "labgrid.remote.client", "-x", rig.address, "-p", "virtual-vpynq0",
                        "unlock", "--kick"], capture_output=True, timeout=60)
    assert _free(rig)


PLUGIN_TEST = '''
import json, os, time

def test_two_boards(lease, request):
    a = lease(2)
    b = lease(1)
    names = [x.name for x in a + b]
    assert len(set(names)) == 3
    with open(os.environ["LAB_LOG"], "a") as f:
        f.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", "-"), "boards": names}) + "\\n")

def test_board(board):
    assert board.name.startswith("vpynq")
'''


def test_pytest_plugin_leases_through_the_coordinator(rig, tmp_path):
    (tmp_path / "test_inner.py").write_text(PLUGIN_TEST)
    env = dict(os.environ, LAB_LOG=str(tmp_path / "log.jsonl"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--boards", str(rig.lab_file),
                        "-n", "2", str(tmp_path / "test_inner.py")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 passed" in r.stdout
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and len(logged[0]["boards"]) == 3
    assert _free(rig)  # released at test end and session end


def test_a_runner_holding_part_yields_to_an_older_waiting_one(rig, client):
    """No hold-and-wait deadlock when two runners' reservations interleave: the older runner (raw labgrid
    reservations) holds 2 and waits for a third, the younger LabLease holds the other 2 and waits for a third.
    The younger gives its two back, the older completes; then the younger gets its boards."""
    import threading

    from labgrid.remote.common import Reservation, ReservationState
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

    older = LabClient(rig.address)
    flt = {"main": pb.Reservation.Filter(filter={"rack": "virtual", "health": "ok"})}

    def reserve():
        return older.call("CreateReservation", pb.CreateReservationRequest(filters=flt, prio=0.0)).reservation.token

    def state(token):
        r = older.call("PollReservation", pb.PollReservationRequest(token=token)).reservation
        return Reservation.from_pb2(r).state

    tokens = [reserve(), reserve()]
    got = {}
    t = threading.Thread(target=lambda: got.update(lease=LabLease(client, rig.lab, 3, timeout=120)))
    try:
        assert [state(tok) for tok in tokens] == [ReservationState.allocated] * 2
        t.start()
        deadline = time.monotonic() + 30
        while len([r for r in rig.client.reservations() if r.owner == client.name]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tokens.append(reserve())  # the older runner's third waits: the lease holds the other two places
        deadline = time.monotonic() + 30
        while state(tokens[2]) is not ReservationState.allocated:
            assert time.monotonic() < deadline, "the younger lease did not give its boards back"
            time.sleep(0.2)
        assert "lease" not in got  # the older runner holds 3 of the 4 boards: the lease still waits
    finally:
        for tok in tokens:
            older.call("CancelReservation", pb.CancelReservationRequest(token=tok))
        older.close()
    t.join(90)
    assert "lease" in got and len(got["lease"].places) == 3
    got["lease"].release()
    assert _free(rig)


KICKED_TEST = '''
import os, time

def test_holds_one_board(lease):
    board = lease(1)[0]
    open(os.environ["LAB_MARK"], "w").write(board.name)
    time.sleep(25)  # meanwhile somebody takes the board away (labgrid-client release --kick)
'''


def test_a_test_whose_boards_were_taken_away_fails(rig, tmp_path):
    """A lease labgrid took back mid-test (someone kicked the lock): the test cannot be vouched for."""
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

    (tmp_path / "test_inner.py").write_text(KICKED_TEST)
    mark = tmp_path / "mark"
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--boards",
                          str(rig.lab_file), "--no-health-check", "test_inner.py"], cwd=tmp_path,
                         env=dict(os.environ, LAB_MARK=str(mark)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    deadline = time.monotonic() + 120
    while not mark.exists() or not mark.read_text():
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    rig.client.call("ReleasePlace", pb.ReleasePlaceRequest(placename=f"virtual-{mark.read_text()}"))
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 1, out
    assert "1 passed, 1 error" in out and "cannot be vouched for" in out and "no longer locked" in out
    assert _free(rig)
