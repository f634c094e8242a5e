"""splitrack's pytest plugin: `--boards PATH`, the `hw` marker, and fixtures for a rack of boards.

Tests marked `hw` need a rack (real or virtual). Without `--boards` they are skipped with the reason.

With `--boards`, the session starts with a health check of every board (SSH reachable, the agent's Python
with numpy runs, enough free memory and disk, a running agent answers). A bad board with a `power_cycle`
command in the rack file is power-cycled once and checked again. A bad board is quarantined: it is
left out of every fixture, and the reason is in the report header and the summary, instead of every test
failing on it.

Fixtures:
    rack         the healthy boards (a `harness.rack.rackfile.Rack`)
    board        one board, leased for the test
    deployed     deployed(plan) -> `harness.rack.deploy.Deployment`: leases as many boards as the plan has
                 partitions, deploys (skipping boards that already carry the same artifact), stops the
                 agents after the test
    lease        lease(n) -> list of boards held for the test

Leases are file locks (one per board, in the temp folder, keyed by the rack file), so with `pytest -n N`
every xdist worker gets boards of its own; a worker waits (bounded, --board-lease-timeout) when the others
hold them.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import List

import pytest

_KEY = "_splitrack_rack"


def pytest_addoption(parser):
    group = parser.getgroup("splitrack")
    group.addoption("--boards", metavar="PATH", default=None,
                    help="rack file (boards.toml) of the boards that hw tests run on")
    group.addoption("--board-lease-timeout", metavar="SECONDS", type=float, default=300.0,
                    help="how long a test waits for boards that other xdist workers hold (default 300)")
    group.addoption("--no-health-check", action="store_true", default=False,
                    help="skip the session-start health check of the rack's boards")


def pytest_configure(config):
    config.addinivalue_line("markers", "hw: needs a rack of boards (real or virtual): run with --boards PATH")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--boards"):
        return
    skip = pytest.mark.skip(reason="hw test: no rack given (run with --boards boards.toml, or `splitrack rack up`)")
    for item in items:
        if "hw" in item.keywords:
            item.add_marker(skip)


class RackState:
    """The session's rack: every board, the healthy ones, and why the others were quarantined."""

    def __init__(self, path: str, check: bool, recover_wait: float = 180.0):
        from harness.rack.deploy import check_rack
        from harness.rack.rackfile import load_rack

        self.path = path
        self.rack = load_rack(path)
        self.health = {}
        self.quarantined = {}
        if check:
            t0 = time.monotonic()
            # a board that fails and has a power_cycle command gets one chance to come back
            for h in check_rack(self.rack, recover=True, wait=recover_wait):
                self.health[h.board] = h
                if not h.ok:
                    self.quarantined[h.board] = h.reason
            self.check_seconds = time.monotonic() - t0
        healthy = [b.name for b in self.rack.boards if b.name not in self.quarantined]
        self.healthy = self.rack.subset(healthy)
        tag = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
        self.lock_dir = Path(tempfile.gettempdir()) / "splitrack-leases" / tag
        self.lock_dir.mkdir(parents=True, exist_ok=True)

    def why_short(self, n: int) -> str:
        q = "; ".join(f"{k} quarantined: {v}" for k, v in self.quarantined.items())
        return (f"needs {n} healthy board(s), rack {self.path} has {len(self.healthy.boards)}"
                + (f" ({q})" if q else ""))


def pytest_sessionstart(session):
    config = session.config
    path = config.getoption("--boards")
    if not path:
        return
    from splitting.errors import UserError

    try:
        state = RackState(path, check=not config.getoption("--no-health-check"))
    except UserError as e:
        raise pytest.UsageError(f"--boards {path}: {e}") from None
    setattr(config, _KEY, state)


def pytest_report_header(config):
    state = getattr(config, _KEY, None)
    if state is None:
        return None
    lines = [f"splitrack rack {state.rack.name} ({state.path}): {len(state.healthy.boards)} of "
             f"{len(state.rack.boards)} boards healthy"]
    for h in state.health.values():
        lines.append("  " + h.line())
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = getattr(config, _KEY, None)
    if state is None or not state.quarantined:
        return
    terminalreporter.section("splitrack: quarantined boards")
    for name, reason in state.quarantined.items():
        terminalreporter.write_line(f"{name}: {reason}")


class Lease:
    """File locks on `n` boards of the rack, held until release()."""

    def __init__(self, state: RackState, n: int, timeout: float):
        from filelock import FileLock, Timeout

        self.locks = []
        self.boards = []
        deadline = time.monotonic() + timeout
        while True:
            for b in state.healthy.boards:
                if len(self.boards) == n:
                    break
                lock = FileLock(str(state.lock_dir / f"{b.name}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                self.locks.append(lock)
                self.boards.append(b)
            if len(self.boards) == n:
                return
            # not enough free boards: give back what we hold (so two workers cannot deadlock), wait, retry
            self.release()
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not lease {n} of {len(state.healthy.boards)} boards within {timeout:.0f} s: "
                                   "other workers hold them; run fewer xdist workers or add boards")
            time.sleep(0.2)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks, self.boards = [], []


def _state(request) -> RackState:
    state = getattr(request.config, _KEY, None)
    if state is None:
        pytest.skip("hw test: no rack given (run with --boards boards.toml, or `splitrack rack up`)")
    return state


@pytest.fixture(scope="session")
def rack(request):
    """The rack's healthy boards (quarantined ones left out)."""
    state = _state(request)
    if not state.healthy.boards:
        pytest.skip(state.why_short(1))
    return state.healthy


@pytest.fixture
def lease(request):
    """lease(n) -> n boards held by this test (file locks: no other xdist worker uses them meanwhile)."""
    state = _state(request)
    held: List[Lease] = []

    def take(n: int):
        if n > len(state.healthy.boards):
            pytest.skip(state.why_short(n))
        held.append(Lease(state, n, request.config.getoption("--board-lease-timeout")))
        return held[-1].boards

    yield take
    for le in held:
        le.release()


@pytest.fixture
def board(lease):
    """One healthy board, held by this test."""
    return lease(1)[0]


@pytest.fixture
def deployed(request, lease):
    """deployed(plan, **deploy_kwargs) -> Deployment on leased boards; agents stop after the test."""
    from harness.rack.deploy import deploy, undeploy
    from harness.rack.rackfile import Rack

    state = _state(request)
    used = []

    def do(plan, **kw):
        n = len(plan.partitions)
        # a second deployment in the same test reuses the boards it holds (redeploy checks need that)
        sub = next((r for r in used if len(r.boards) >= n), None)
        if sub is None:
            sub = Rack(state.rack.name, lease(n), state.rack.path, state.rack.virtual_state)
            used.append(sub)
        return deploy(plan, sub, **kw)

    yield do
    for sub in used:
        try:
            undeploy(sub)
        except Exception as e:  # a board a fault test broke: say so, do not fail the test that passed
            print(f"splitrack: stopping agents on {sub.names} failed: {e}")
