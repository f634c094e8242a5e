"""splitrack's pytest plugin: `--boards FILE` (the rack file), the `hw` marker, and fixtures for a rack of boards.

Tests marked `hw` need a rack (real or virtual). Without `--boards` they are skipped with the reason.

With `--boards`, the session starts with a health check of every board (SSH reachable, the agent's Python
with numpy runs, enough free memory and disk, a running agent answers). A bad board with a `power_cycle`
command in the rack file is power-cycled once and checked again. A bad board is quarantined: it is
left out of every fixture, and the reason is in the report header and the summary, instead of every test
failing on it.

Fixtures:
    rack         the healthy boards (a `harness.rack.rackfile.Rack`)
    board        one board, leased for the test
    deployed     deployed(plan) -> `Deployed` (a `harness.rack.deploy.Deployment` and `stream`): `plan` is a plan
                 folder (str or Path) or a loaded `splitting.plan.Plan`; leases as many boards as the plan has partitions,
                 deploys (skipping boards that already carry the same artifact), stops the agents after the test.
                 `dep.stream(x)` sends frames through the boards and returns their outputs;
                 `dep.expected(x)` is what they must return (the chained hls4ml emulation), e.g.
                     def test_my_model(deployed):
                         dep = deployed("plan")
                         assert np.array_equal(dep.stream(x), dep.expected(x))
    lease        lease(n) -> list of boards held for the test

Leases are file locks (one per board, in the temp folder, keyed by the rack file), so with `pytest -n N`
every xdist worker gets boards of its own; a worker waits (bounded, --board-lease-timeout) when the others
hold them. A test's boards are also leased on the boards themselves (`harness.rack.lease`), which keeps out
every other user of the rack, on this machine or another, for as long as the test runs.

A rack file whose [rack] names a labgrid `coordinator` is a shared rack (harness.rack.lab_lease): its boards are
labgrid places, leases are labgrid reservations and locks (each xdist worker, each runner its own), the
health check tags bad boards in labgrid so no runner gets them, and every lease still held is given back at
session end.
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
    """Add the splitrack options: --boards FILE, --board-lease-timeout SECONDS (default 300 s),
    --no-health-check, --allow-no-boards."""
    group = parser.getgroup("splitrack")
    group.addoption("--boards", metavar="FILE", default=None,
                    help="rack file (boards.toml) of the boards that hw tests run on")
    group.addoption("--board-lease-timeout", metavar="SECONDS", type=float, default=300.0,
                    help="how long a test waits for boards that other xdist workers hold (default 300)")
    group.addoption("--no-health-check", action="store_true", default=False,
                    help="skip the session-start health check of the rack's boards")
    group.addoption("--allow-no-boards", action="store_true", default=False,
                    help="with -m hw and no --boards: skip the hw tests instead of refusing to run")


def _selects_only_hw(markexpr: str) -> bool:
    """True when `-m markexpr` keeps tests marked hw and drops unmarked ones (`-m hw`, `-m "hw and benchmark"`)."""
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression  # pytest's own -m parser: "not hw" is not hw

        expr = Expression.compile(markexpr)
        return expr.evaluate(lambda name, **kw: name == "hw") and not expr.evaluate(lambda name, **kw: False)
    except Exception:  # a pytest without that module: the plain reading
        import re

        return bool(re.fullmatch(r"\s*hw\b.*", markexpr)) and "not hw" not in markexpr


def pytest_configure(config):
    """Register the `hw` marker; raises pytest.UsageError when `-m` selects only hw tests and neither --boards
    nor --allow-no-boards is given (the run would otherwise pass with everything skipped)."""
    config.addinivalue_line("markers", "hw: needs a rack of boards (real or virtual): run with --boards FILE")
    # asking for the hw tests without a rack would skip them all and exit 0: a CI job that forgot --boards
    # must go red instead
    if (_selects_only_hw(config.getoption("markexpr", "") or "") and not config.getoption("--boards")
            and not config.getoption("--allow-no-boards")):
        raise pytest.UsageError("-m hw needs a rack: add --boards rack.toml (start a virtual one with "
                                "`splitrack rack up --n-boards 5 --out rack.toml`), or --allow-no-boards to skip")
    from splitting.quiet_tensorflow import quiet

    quiet()  # TensorFlow's start-up lines, once per worker, say nothing about the tests


def pytest_collection_modifyitems(config, items):
    """Without --boards, mark every hw test skipped and count them for the summary."""
    if config.getoption("--boards"):
        return
    skip = pytest.mark.skip(reason="hw test: no rack given (run with --boards boards.toml, or `splitrack rack up`)")
    n = 0
    for item in items:
        if "hw" in item.keywords:
            item.add_marker(skip)
            n += 1
    config._splitrack_hw_skipped = n  # said in the summary, where it shows without -rs


class RackState:
    """The session's rack: every board, the healthy ones, and why the others were quarantined."""

    def __init__(self, path: str, check: bool, recover_wait: float = 180.0):
        from harness.rack.health import check_rack
        from harness.rack.rackfile import load_rack

        self.path = path
        self.rack = load_rack(path)
        self.health = {}
        self.quarantined = {}
        self.lab = None  # a shared rack: the labgrid client of this process (each xdist worker has its own)
        self.lab_leases = []
        if self.rack.lab:
            self._init_lab(check, recover_wait)
            return
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

    def _init_lab(self, check: bool, recover_wait: float) -> None:
        """A rack file naming a labgrid coordinator: the boards are its places. The health check covers the
        boards nobody holds and those tagged bad, and tags the result in labgrid (harness.rack.lab_lease)."""
        from harness.rack.health import check_rack
        from harness.rack.lab_client import LabClient
        from harness.rack.lab_export import TAG_REASON
        from harness.rack.lab_lease import check_and_tag, lab_boards
        from harness.rack.rackfile import Rack

        self.lab = LabClient(self.rack.lab.coordinator)
        if check:
            t0 = time.monotonic()
            boards, self.health = check_and_tag(
                self.lab, self.rack, lambda bs: check_rack(Rack(self.rack.name, bs), recover=True, wait=recover_wait))
            self.check_seconds = time.monotonic() - t0
        else:
            boards = lab_boards(self.lab, self.rack)
        usable = [lb for lb in boards if lb.board and lb.healthy and not lb.problem]
        for lb in boards:
            if lb not in usable:
                self.quarantined[lb.board.name if lb.board else lb.place] = lb.tags.get(TAG_REASON) or lb.problem
        self.healthy = Rack(self.rack.name, [lb.board for lb in usable], self.rack.path)

    def lease(self, n: int, timeout: float):
        """n boards held until .release(): labgrid reservations and locks on a shared rack, file locks else."""
        if self.lab is None:
            return Lease(self, n, timeout)
        from harness.rack.lab_lease import LabLease

        self.lab_leases.append(LabLease(self.lab, self.rack, n, timeout))
        return self.lab_leases[-1]

    def close(self) -> None:
        """Session end: give back every shared-rack board still held (a test that leaked a lease)."""
        for le in self.lab_leases:
            le.release()
        if self.lab is not None:
            self.lab.close()
            self.lab = None

    def why_short(self, n: int) -> str:
        """A skip reason for a test needing `n` boards: how many healthy boards the rack has, and why the others
        were quarantined."""
        q = "; ".join(f"{k} quarantined: {v}" for k, v in self.quarantined.items())
        return (f"needs {n} healthy board(s), rack {self.path} has {len(self.healthy.boards)}"
                + (f" ({q})" if q else ""))


def pytest_sessionstart(session):
    """With --boards: load the rack file and health-check its boards (unless --no-health-check). Raises
    pytest.UsageError when the rack file cannot be used."""
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


def pytest_sessionfinish(session, exitstatus):
    """Give back every shared-rack lease still held and close the labgrid client."""
    state = getattr(session.config, _KEY, None)
    if state is not None:
        state.close()


def pytest_report_header(config):
    """Header lines: how many boards of the rack are healthy and each board's health line; None without --boards."""
    state = getattr(config, _KEY, None)
    if state is None:
        return None
    total = len(state.rack.boards) or len(state.healthy.boards) + len(state.quarantined)  # shared: places
    lines = [f"splitrack rack {state.rack.name} ({state.path}): {len(state.healthy.boards)} of "
             f"{total} boards healthy" + (f", leased through labgrid at {state.rack.lab.coordinator}"
                                          if state.rack.lab else "")]
    for h in state.health.values():
        lines.append("  " + h.line())
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Summary lines: how many hw tests were skipped for want of a rack, and each quarantined board with its reason."""
    n = getattr(config, "_splitrack_hw_skipped", 0)
    if n:
        terminalreporter.write_line(f"splitrack: {n} hw test(s) skipped: no rack given (run with --boards rack.toml)")
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
        self.board_lease = None
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
                # the file locks keep this machine's xdist workers apart; the lease on the boards themselves
                # keeps every other user (another machine, a `splitrack run` beside the tests) out
                from harness.rack.lease import RackLease

                self.board_lease = RackLease(self.boards, "pytest", wait=max(0.0, deadline - time.monotonic()))
                try:
                    self.board_lease.acquire()
                except BaseException:
                    self.board_lease = None
                    self.release()
                    raise
                return
            # not enough free boards: give back what we hold (so two workers cannot deadlock), wait, retry
            self.release()
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not lease {n} of {len(state.healthy.boards)} boards within {timeout:.0f} s: "
                                   "other workers hold them; run fewer xdist workers or add boards")
            time.sleep(0.2)

    def release(self) -> None:
        """Release the boards' own lease and the file locks; calling it again does nothing."""
        if self.board_lease is not None:
            self.board_lease.release()
            self.board_lease = None
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
        held.append(state.lease(n, request.config.getoption("--board-lease-timeout")))
        return held[-1].boards

    yield take
    lost = [le.lost for le in held if getattr(le, "lost", "")]  # a shared-rack lease labgrid took back
    for le in held:
        le.release()
    if lost:
        pytest.fail(f"boards of this test were not held throughout, so its result cannot be vouched for: {lost[0]}")


@pytest.fixture
def board(lease):
    """One healthy board, held by this test."""
    return lease(1)[0]


class Deployed:
    """What the `deployed` fixture returns: the `harness.rack.deploy.Deployment` (its attributes read through:
    placed, wiring, boards, flashed, expected(x), ...) and `stream(x)` for a test."""

    def __init__(self, deployment):
        self.deployment = deployment

    def __getattr__(self, name):
        return getattr(self.deployment, name)

    def stream(self, frames, in_flight: int = 8, timeout: float = 10.0):
        """harness.measure.stream.stream_outputs through this deployment's boards: (n, values per frame)."""
        from harness.measure.stream import stream_outputs

        return stream_outputs(self.wiring, frames, in_flight=in_flight, timeout=timeout)


@pytest.fixture
def deployed(request, lease):
    """deployed(plan, **deploy_kwargs) -> Deployment on leased boards; agents stop after the test. `plan`: a
    plan folder (str or Path) or a `Plan`."""
    from harness.rack.deploy import deploy, undeploy
    from harness.rack.rackfile import Rack

    state = _state(request)
    used = []

    def do(plan, **kw):
        from splitting.plan import Plan

        if isinstance(plan, (str, Path)):
            plan = Plan.load(plan)  # a folder: raises PlanError saying what is missing
        elif not isinstance(plan, Plan):
            raise TypeError(f"deployed(plan): give a plan folder (str or Path) or a splitting.plan.Plan, "
                            f"not {type(plan).__name__}")
        n = len(plan.partitions)
        # a second deployment in the same test reuses the boards it holds (redeploy checks need that)
        sub = next((r for r in used if len(r.boards) >= n), None)
        if sub is None:
            sub = Rack(state.rack.name, lease(n), state.rack.path, state.rack.virtual_state)
            used.append(sub)
        return Deployed(deploy(plan, sub, **kw))

    yield do
    for sub in used:
        try:
            undeploy(sub)
        except Exception as e:  # a board a fault test broke: say so, do not fail the test that passed
            print(f"splitrack: stopping agents on {sub.names} failed: {e}")
