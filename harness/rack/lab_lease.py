"""Boards of a shared rack, leased through a labgrid coordinator.

A rack file whose `[rack]` names `coordinator = "HOST:PORT"` has no `[[boards]]`: its boards are the labgrid
places whose tags include the rack file's `tags`, and a board's SSH and agent endpoints are the place's
`NetworkService` resources (`ssh`, `agent`, written by `splitrack lab export`). What labgrid does not hold
(key, known_hosts, python, workdir, ...) comes from the rack file's `[defaults]`.

Leasing N boards (`LabLease`), on labgrid's own mechanisms:

1. N reservations with the filter `tags + health=ok` (labgrid allocates one place per reservation, and never
   a place tagged `health=bad`), polled until every one is allocated;
   Two runners that each hold part of what they need must not wait on each other forever: a runner that
   holds some allocations while an older reservation of another runner (same filter) waits gives its own
   back and queues again behind it. labgrid allocates free places to waiting reservations oldest first,
   so the oldest runner always completes; nobody yields to a younger one;
2. the allocated places locked (labgrid "acquire") in sorted name order; if a lock fails (a person locked
   the place with labgrid-client meanwhile), everything is given back and the lease queues again; at the
   overall timeout, everything is given back and LabError says who holds the boards;
3. while held, a refresher polls the reservations (labgrid's keep-alive) and writes the place tag
   `lease_alive` (unix seconds) every REFRESH_S seconds;
4. release (in `finally`, at pytest session end) unlocks the places and cancels the reservations.

A runner that dies: a reservation not yet locked expires in labgrid (60 s without a poll; the coordinator
checks every 15 s). A locked place does not expire in labgrid (its lock outlives the client by design), so a
place that is locked and whose `lease_alive` is older than STALE_S is taken back by the next runner that
needs it: its lock released (labgrid-client's `release --kick`) and its reservation cancelled. A place
locked without `lease_alive` (a person's `labgrid-client lock`) is never taken back.
"""
from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from harness.rack.lab_client import LabClient, LabError
from harness.rack.lab_export import TAG_ALIVE, TAG_BOARD, TAG_HEALTH, TAG_KIND, TAG_PYNQ, TAG_REASON, TAG_SINCE
from harness.rack.rackfile import Board, Rack, RackError, _board_from

REFRESH_S = 10.0  # heartbeat and reservation poll while holding
STALE_S = 45.0  # a locked place whose heartbeat is older than this belongs to a dead runner


@dataclass
class LabBoard:
    """A place of the shared rack and the board it stands for (None when its resources are missing)."""

    place: str
    tags: Dict[str, str]
    board: Optional[Board]
    problem: str = ""  # why board is None
    acquired: Optional[str] = None  # labgrid's "acquired by" (HOST/USER)
    reservation: Optional[str] = None

    @property
    def healthy(self) -> bool:
        """True unless the place's health tag says otherwise (no tag counts as ok)."""
        return self.tags.get(TAG_HEALTH, "ok") == "ok"


def tags_match(tags: Dict[str, str], want: Dict[str, str]) -> bool:
    """True when `tags` has every key of `want` with the same value (an empty `want` matches anything)."""
    return all(tags.get(k) == v for k, v in want.items())


def network_services(client_resources, place, names=("ssh", "agent")) -> Dict[str, dict]:
    """name -> params of the place's NetworkService resources: the acquired ones when the place is locked
    (what labgrid handed over), otherwise those its matches select."""
    out: Dict[str, dict] = {}
    paths = [tuple(p) for p in place.acquired_resources] if place.acquired else None
    for exporter, groups in client_resources.items():
        for group, resources in groups.items():
            for rname, entry in resources.items():
                path = (exporter, group, entry.cls, rname)
                chosen = path in paths if paths is not None else place.hasmatch(path)
                if chosen and entry.cls == "NetworkService" and rname in names:
                    out[rname] = dict(entry.params, avail=entry.avail)
    return out


def board_of(rack: Rack, place, resources) -> LabBoard:
    """The Board a place stands for, validated like a rack file's board (data from the network is
    untrusted). Never raises: a place that cannot be a board gets a problem."""
    tags = dict(place.tags)
    lb = LabBoard(place.name, tags, None, acquired=place.acquired, reservation=place.reservation)
    params = network_services(resources, place)
    if "ssh" not in params:
        lb.problem = "no NetworkService `ssh` resource (is its exporter running?)"
        return lb
    ssh, agent = params["ssh"], params.get("agent")
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in rack.lab.defaults.items()}
    d.update(name=tags.get(TAG_BOARD, place.name), host=ssh.get("address"), port=ssh.get("port"),
             user=ssh.get("username"), kind=tags.get(TAG_KIND, ""))
    if TAG_PYNQ in tags:
        d["pynq_version"] = tags[TAG_PYNQ]
    if agent:
        d["data_port"] = agent.get("port")
    try:
        lb.board = _board_from(d, rack.path or Path("lab.toml"), 0, {})
    except RackError as e:
        lb.problem = f"place {place.name}: {str(e).split(': ', 1)[-1]}"
    if lb.board and not ssh.get("avail", True):
        lb.problem = "its exporter marks the ssh resource unavailable"
    return lb


def lab_boards(client: LabClient, rack: Rack) -> List[LabBoard]:
    """Every place of the shared rack (tags match), sorted by place name."""
    client.sync()
    resources = client.resources()
    places = client.places()
    return [board_of(rack, p, resources) for n, p in sorted(places.items()) if tags_match(p.tags, rack.lab.tags)]


def set_tags(client: LabClient, place: str, tags: Dict[str, str]) -> None:
    """Set (value) or clear ("") tags on a place."""
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

    client.call("SetPlaceTags", pb.SetPlaceTagsRequest(placename=place, tags=tags), f"tag {place}")


def mark_health(client: LabClient, place: str, ok: bool, reason: str = "") -> None:
    """The LAVA model: a bad board is tagged health=bad with the reason (no reservation filter that asks for
    health=ok gets it); passing again clears both."""
    if ok:
        set_tags(client, place, {TAG_HEALTH: "ok", TAG_REASON: ""})
    else:
        set_tags(client, place, {TAG_HEALTH: "bad", TAG_REASON: " ".join(reason.split())[:300] or "unhealthy"})


def check_and_tag(client: LabClient, rack: Rack, check: Callable[[List[Board]], list],
                  progress: Optional[Callable[[str], None]] = None) -> Tuple[List[LabBoard], Dict[str, object]]:
    """Health-check the shared rack's boards that nobody holds (and every board tagged bad, so a repaired
    board comes back), and tag the results in labgrid. Boards another runner holds are left alone: it
    holds them healthy and is using them. check(boards) -> list of harness.rack.health.Health, in order.
    Returns (every board, health by board name)."""
    boards = lab_boards(client, rack)
    todo = [lb for lb in boards if lb.board and (not lb.healthy or (not lb.acquired and not lb.reservation))]
    health: Dict[str, object] = {}
    for lb, h in zip(todo, check([lb.board for lb in todo]) if todo else []):
        health[lb.board.name] = h
        if h.ok != lb.healthy or (not h.ok and lb.tags.get(TAG_REASON) != h.reason):
            mark_health(client, lb.place, h.ok, h.reason)
            if progress:
                progress(f"{lb.place}: {'healthy again' if h.ok else 'tagged unhealthy: ' + h.reason}")
    for lb in boards:
        if lb.board is None and lb.healthy:
            mark_health(client, lb.place, False, lb.problem)
    return lab_boards(client, rack), health


@dataclass
class LabLease:
    """N boards of a shared rack held through labgrid until release(). See the module docstring.

    Raises LabError (a UserError) when the boards cannot be had within `timeout` seconds.
    """

    client: LabClient
    rack: Rack
    n: int
    timeout: float = 300.0
    progress: Optional[Callable[[str], None]] = None
    boards: List[Board] = field(default_factory=list)
    places: List[str] = field(default_factory=list)
    tokens: List[str] = field(default_factory=list)
    since: float = 0.0
    lost: str = ""  # set by the refresher when labgrid no longer shows this lease's lock

    def __post_init__(self):
        self._stop = threading.Event()
        self._refresher: Optional[threading.Thread] = None
        deadline = time.monotonic() + self.timeout
        filters = dict(self.rack.lab.tags, **{TAG_HEALTH: "ok"})
        usable = [b for b in lab_boards(self.client, self.rack) if b.board and b.healthy]
        if self.n > len(usable):  # would wait for the timeout, holding what it got from everybody else
            raise LabError(f"shared rack {self.rack.name} has {len(usable)} healthy board(s) with tags "
                           f"{self.rack.lab.tags}, {self.n} asked for: {self._who_holds()}")
        while True:
            try:
                if self._try(filters, deadline):
                    break
            except BaseException:
                self.release()
                raise
            self.release()
            if time.monotonic() >= deadline:
                raise LabError(f"could not lease {self.n} board(s) of shared rack {self.rack.name} within "
                               f"{self.timeout:.0f} s: {self._who_holds()}")
            time.sleep(random.uniform(0.1, 0.5))
        self._stop = threading.Event()  # release() of a failed try set the old one
        self._refresher = threading.Thread(target=self._refresh, name="lab-lease-refresh", daemon=True)
        self._refresher.start()

    # --- taking ---------------------------------------------------------------------------------------
    def _try(self, filters: Dict[str, str], until: float) -> bool:
        from labgrid.remote.common import Reservation, ReservationState
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        flt = {"main": pb.Reservation.Filter(filter=filters)}
        for _ in range(self.n):
            resp = self.client.call("CreateReservation", pb.CreateReservationRequest(filters=flt, prio=0.0),
                                    "reserve")
            self.tokens.append(resp.reservation.token)
        allocated: Dict[str, str] = {}
        while True:
            for token in self.tokens:
                resp = self.client.call("PollReservation", pb.PollReservationRequest(token=token), "poll")
                res = Reservation.from_pb2(resp.reservation)
                if res.state is ReservationState.allocated:
                    allocated[token] = res.allocations["main"][0]
                elif res.state in (ReservationState.expired, ReservationState.invalid):
                    return False
            if len(allocated) == self.n:
                break
            if allocated and self._should_yield(filters):
                if self.progress:
                    self.progress(f"lab: an older request waits for boards; giving back {len(allocated)} and queueing again")
                return False
            self._take_back_stale()
            if time.monotonic() >= until:
                return False
            time.sleep(0.5)
        # lock in a fixed order: two runners that got overlapping allocations (they cannot, but a person's
        # `labgrid-client lock` can take a place) meet in the same order and one of them gives everything back
        resources = None
        for place in sorted(allocated.values()):
            now = str(int(time.time()))
            set_tags(self.client, place, {TAG_ALIVE: now, TAG_SINCE: now})
            try:
                self.client.call("AcquirePlace", pb.AcquirePlaceRequest(placename=place), f"lock {place}")
            except LabError as e:
                set_tags(self.client, place, {TAG_ALIVE: "", TAG_SINCE: ""})
                if self.progress:
                    self.progress(f"lab: {e}; giving the boards back and trying again")
                return False
            self.places.append(place)
        self.client.sync()
        resources = self.client.resources()
        places = self.client.places()
        for name in self.places:
            lb = board_of(self.rack, places[name], resources)
            if lb.board is None or lb.problem or not lb.healthy or places[name].acquired != self.client.name:
                if self.progress:
                    self.progress(f"lab: {name} cannot be used ({lb.problem or 'tagged unhealthy or lost'}); "
                                  "trying again")
                return False
            self.boards.append(lb.board)
        self.since = time.time()
        return True

    def _should_yield(self, filters: Dict[str, str]) -> bool:
        """True when another runner with a waiting reservation (same filter) is older than this one. A runner's
        age is that of its oldest reservation with the filter: a total order (ties by name), so the oldest
        runner never yields and always completes, even when the reservations of two runners interleaved."""
        from labgrid.remote.common import ReservationState

        age: Dict[str, Tuple[float, str]] = {}
        waiting = set()
        for r in self.client.reservations():
            if r.filters.get("main") != filters:
                continue
            age[r.owner] = min(age.get(r.owner, (r.created, r.owner)), (r.created, r.owner))
            if r.state is ReservationState.waiting:
                waiting.add(r.owner)
        me = age.get(self.client.name)
        return me is not None and any(age[o] < me for o in waiting if o != self.client.name)

    def _take_back_stale(self) -> None:
        """Unlock places of the shared rack whose holder stopped its heartbeat STALE_S ago (a killed runner),
        and cancel their reservations, so that labgrid can allocate them again."""
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        now = time.time()
        for name, p in self.client.places().items():
            if not tags_match(p.tags, self.rack.lab.tags) or not p.acquired or name in self.places:
                continue
            alive = p.tags.get(TAG_ALIVE, "")
            if not alive.isdigit() or now - int(alive) < STALE_S:
                continue
            if self.progress:
                self.progress(f"lab: {name} held by {p.acquired} without a heartbeat for {now - int(alive):.0f} s: "
                              "taking it back")
            try:
                set_tags(self.client, name, {TAG_ALIVE: "", TAG_SINCE: ""})
                self.client.call("ReleasePlace", pb.ReleasePlaceRequest(placename=name, fromuser=p.acquired),
                                 f"release stale {name}")
                if p.reservation:
                    self.client.call("CancelReservation", pb.CancelReservationRequest(token=p.reservation),
                                     f"cancel stale reservation of {name}")
            except LabError:
                pass  # another runner took it back first

    def _who_holds(self) -> str:
        try:
            boards = lab_boards(self.client, self.rack)
        except LabError as e:
            return str(e)
        free = [b.place for b in boards if b.healthy and not b.acquired and not b.reservation]
        held = [f"{b.place} by {b.acquired or 'a reservation'}" for b in boards if b.acquired or b.reservation]
        bad = [f"{b.place} ({b.tags.get(TAG_REASON, '')})" for b in boards if not b.healthy]
        parts = [f"{len(boards)} board(s) match tags {self.rack.lab.tags}"]
        parts.append(f"free: {', '.join(free) or 'none'}")
        if held:
            parts.append("held: " + "; ".join(held))
        if bad:
            parts.append("unhealthy: " + "; ".join(bad))
        return "; ".join(parts) + " (see `splitrack lab status`)"

    # --- holding --------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        last_ok = time.time()
        while not self._stop.wait(REFRESH_S):
            try:
                for token in list(self.tokens):
                    self.client.call("PollReservation", pb.PollReservationRequest(token=token), "refresh")
                places = self.client.places()
                for name in list(self.places):
                    if places.get(name) is None or places[name].acquired != self.client.name:
                        self.lost = f"{name} is no longer locked by this runner ({self.client.name})"
                        continue
                    set_tags(self.client, name, {TAG_ALIVE: str(int(time.time()))})
                last_ok = time.time()
            except LabError as e:  # a slow answer is retried; a heartbeat missing for STALE_S is a lost lease
                if time.time() - last_ok >= STALE_S:
                    self.lost = f"no heartbeat for {time.time() - last_ok:.0f} s, other runners may take the boards: {e}"

    def release(self) -> None:
        """Unlock the places and cancel the reservations. Safe to call twice; never raises."""
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        self._stop.set()
        if self._refresher is not None and self._refresher is not threading.current_thread():
            self._refresher.join(timeout=REFRESH_S + 5)
        for name in reversed(self.places):
            try:
                set_tags(self.client, name, {TAG_ALIVE: "", TAG_SINCE: ""})
                self.client.call("ReleasePlace", pb.ReleasePlaceRequest(placename=name, fromuser=self.client.name),
                                 f"release {name}")
            except LabError:
                pass  # coordinator gone: the place is released when it is taken back as stale
        for token in self.tokens:
            try:
                self.client.call("CancelReservation", pb.CancelReservationRequest(token=token), "cancel")
            except LabError:
                pass  # already expired
        self.places, self.tokens, self.boards = [], [], []


@contextlib.contextmanager
def leased_rack(rack: Rack, n: int, timeout: float = 300.0, progress: Optional[Callable[[str], None]] = print):
    """For commands that deploy and run (`splitrack run`, `bench`, `nightly`): a rack file that lists boards
    is used as it is; a shared rack yields a Rack of n boards leased through labgrid for the block, given
    back when it ends (also on an error or Ctrl-C)."""
    if rack.lab is None:
        yield rack
        return
    with LabClient(rack.lab.coordinator) as client:
        if progress:
            progress(f"leasing {n} board(s) of shared rack {rack.name} through labgrid at {rack.lab.coordinator} ...")
        lease = LabLease(client, rack, n, timeout, progress=progress)
        try:
            if progress:
                progress(f"holding {', '.join(b.name for b in lease.boards)} ({', '.join(lease.places)})")
            yield Rack(rack.name, list(lease.boards), rack.path)
        finally:
            lease.release()
