"""Exclusive leases on boards, held on the boards themselves: one user at a time per board.

A lease is the file `lease.json` in the board's workdir, created atomically over SFTP (O_EXCL: of two
users who try at once, exactly one creates it), holding who (user@host:pid), since when and until when.
The holder refreshes it while it works (a thread rewrites it every ttl/4) and removes it at the end. A
lease whose holder died is not refreshed and expires after `ttl` seconds. Its age is measured on clocks
that never step: the board's monotonic clock (/proc/uptime, written into every refresh with the board's
boot id; a PYNQ-Z2 has no RTC battery, so its wall clock steps when NTP finds it, back or forward), and,
while a user waits, that user's own monotonic clock watching the file not change. A board without
/proc/uptime falls back to its wall clock (the file's modification time against the time the board gives a
file written now), and an age below zero there (the board's clock stepped back) counts as unknown, not as
young. A holder on this very machine that has died (its pid gone, or reused by another process) is seen at
once. The clocks of the users' machines never matter. Because the lease lives on the board, it keeps users
on different machines apart too.

Boards are leased one at a time in the rack's order and given back at once when one of them is held by
someone else: of two users wanting the same boards, the first to lease the first board gets them all and
the other gets `LeaseHeld` (a one-line error naming the holder and since when), or waits with `wait`.

Breaking an expired lease renames it to a name of our own first (a rename succeeds for one user only),
then checks that the renamed file is the expired lease we read (not a fresh one that replaced it
meanwhile) before creating ours. The refresher checks that the file it refreshes is still ours; a lease
lost anyway is reported by `RackLease.check()` instead of being silently overwritten.

Within one process a board leased once counts as held for every later use (deploy inside run inside a
pytest fixture): `ensure()` leases only the boards this process does not hold yet.
"""
from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

from splitting.errors import UserError

from harness.rack.rackfile import Board
from harness.rack.ssh import CONNECT_TIMEOUT, BoardError, Connection

LEASE_FILE = "lease.json"
DEFAULT_TTL = 60.0  # seconds a lease outlives its last refresh (a holder that died frees the board after this)
EMPTY_GRACE = 30.0  # a lease file still empty after this long belongs to a user who died while creating it
RETRY_EVERY = 1.0  # seconds between attempts while waiting

GIVE_BACK_WAIT = 3.0  # seconds release() waits for the boards to confirm their lease files are gone
_abandoned: set = set()  # tokens of this process's leases that a board did not confirm removing
_held: Dict[tuple, "RackLease"] = {}
_unreachable: Dict[tuple, BoardError] = {}  # boards the last attempt could not reach, and why
UNREACHABLE_STAGES = ("connect", "auth", "host-key")  # (host, port, workdir) -> the lease of this process that holds it
_held_lock = threading.Lock()


class LeaseHeld(UserError):
    """A board is leased by someone else (the message names the holder and since when)."""


class LeaseLost(UserError):
    """Our lease on a board was broken or replaced while we held it."""


def owner_name() -> str:
    """user@host:pid of this process."""
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(board: Board) -> tuple:
    return (board.host, board.port, board.workdir)


def _read_local(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), '' when it does not exist:
    with the pid it names one process for the life of the machine (a pid alone is reused)."""
    stat = _read_local(f"/proc/{pid}/stat")
    try:
        return stat.rsplit(")", 1)[1].split()[19] if stat else ""
    except IndexError:
        return ""


def _holder_identity() -> Dict[str, str]:
    """What tells another process on this machine whether this holder still lives: the host's boot id, the
    pid namespace, the hostname and this process's start time (see _dead_here)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return {"host_boot": _read_local("/proc/sys/kernel/random/boot_id"), "pid_ns": ns,
            "hostname": socket.gethostname(), "pid": str(os.getpid()), "pid_start": _start_ticks(os.getpid())}


def _dead_here(d: dict) -> bool:
    """True when the lease body `d` was written by a process of this very machine, boot and pid namespace that
    no longer runs (its pid is gone, or belongs to a process started at another time). False whenever that
    cannot be known (another machine, a container, an older lease without these fields)."""
    me = _holder_identity()
    theirs = {k: str(d.get(k, "")) for k in ("host_boot", "pid_ns", "hostname", "pid", "pid_start")}
    if not all(theirs.values()) or any(theirs[k] != me[k] for k in ("host_boot", "pid_ns", "hostname")):
        return False
    return _start_ticks(int(theirs["pid"])) != theirs["pid_start"] if theirs["pid"].isdigit() else False


@dataclass
class LeaseInfo:
    """What a lease file says, and how old it is by the board's clock."""

    owner: str
    since: str  # ISO time (the holder's clock) the lease was taken
    expires: str  # ISO time (the holder's clock) of the last refresh plus ttl
    ttl: float
    token: str  # random, per lease: tells our own lease from someone else's
    purpose: str
    age: float  # seconds since the last refresh (see `clock`); inf: certainly expired (a dead holder)
    board: str = ""  # the board (as the holder's rack file names it) the lease was taken for
    clock: str = "board uptime"  # what measured `age`: "board uptime", "board clock", "watched" or "holder"
    note: str = ""  # why the age is what it is, when that is not the ordinary case

    @property
    def expired(self) -> bool:
        """True when the last refresh is older than the lease's ttl (seconds)."""
        return self.age > self.ttl

    def describe(self) -> str:
        """One line for messages: who holds the lease, since when, for what, and its age and expiry in seconds."""
        note = f"; {self.note}" if self.note else ""
        return (f"leased by {self.owner} since {self.since} for {self.purpose or 'a job'} "
                f"(refreshed {self.age:.0f} s ago, expires {max(0.0, self.ttl - self.age):.0f} s after the last "
                f"refresh{note})")


class RackLease:
    """Exclusive leases on `boards`. Use as a context manager, or acquire()/release().

    purpose: what the lease is for (deploy, run, bench ...), shown to a user who finds it held.
    wait: seconds to keep trying while a board is held by someone else (0: fail at once with LeaseHeld).
    ttl: seconds the lease outlives its last refresh.
    Raises LeaseHeld, BoardError (a board that cannot be reached; its stage is "lease"), or UserError for
    two boards that are one folder.
    """

    def __init__(self, boards: List[Board], purpose: str = "", wait: float = 0.0, ttl: float = DEFAULT_TTL,
                 connect_timeout: float = CONNECT_TIMEOUT, progress: Callable[[str], None] = lambda s: None):
        self.boards = list(boards)
        self.purpose = purpose
        self.wait = wait
        self.ttl = ttl
        self.connect_timeout = connect_timeout
        self.progress = progress
        self.owner = owner_name()
        self.token = secrets.token_hex(16)
        self.since = time.time()
        self.conns: Dict[str, Connection] = {}  # board name -> its connection, kept for refreshes
        self.paths: Dict[str, str] = {}  # board name -> lease file on the board
        self.lost: Optional[str] = None
        self.unreachable: Dict[str, BoardError] = {}  # board name -> why it could not be leased
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._io = threading.Lock()  # the refresher and release() share the connections
        self._seq = 0  # refreshes so far: every refresh changes the file, which a watcher sees
        self._watched: Dict[str, tuple] = {}  # board name -> (a held lease's text, monotonic time first seen)
        self._me = _holder_identity()

    # --- the lease file --------------------------------------------------------------------------------
    def _body(self, board: str, uptime: Optional[tuple] = None) -> bytes:
        now = time.time()
        self._seq += 1
        d = {"owner": self.owner, "since": _iso(self.since), "expires": _iso(now + self.ttl), "ttl": self.ttl,
             "token": self.token, "purpose": self.purpose, "board": board, "seq": self._seq, **self._me}
        if uptime is not None:  # the board's monotonic clock at this refresh (and which boot it counts from)
            d["board_boot"], d["board_uptime"] = uptime
        return (json.dumps(d) + "\n").encode()

    def _uptime(self, conn: Connection) -> Optional[tuple]:
        """(boot id, seconds since boot) of the board, from /proc over SFTP: a clock that does not step when
        the board's wall clock does. None when the board does not have them (then the lease falls back to
        the board's wall clock)."""
        try:
            boot = (conn.read_text("/proc/sys/kernel/random/boot_id", stage="lease") or "").strip()
            up = float((conn.read_text("/proc/uptime", stage="lease") or "").split()[0])
        except (BoardError, ValueError, IndexError):
            return None
        return (boot, up) if boot and up > 0 else None

    def _board_now(self, conn: Connection, folder: str) -> float:
        """The board's clock, as the modification time it gives a file written now."""
        probe = f"{folder}/.lease-clock-{self.token}"
        conn.put_bytes(b"", probe, stage="lease")
        try:
            return float(conn.sftp_call("lease", f"reading the time of {probe}", conn.sftp.stat, probe).st_mtime)
        finally:
            conn.remove(probe, stage="lease")

    def _read(self, conn: Connection, path: str, folder: str, board: str = "") -> Optional[LeaseInfo]:
        """The lease at `path`, or None when there is none. An unreadable or half-written file counts as a
        lease by an unknown holder (expired after EMPTY_GRACE).

        Its age, in this order: infinite when its holder is a dead process of this machine; the board's
        uptime since the refresh (same boot; another boot: the board restarted, infinite); else the board's
        wall clock (mtime). An age below zero on either board clock (the clock stepped back, or a forged
        file) is unknown, not young: then only watching counts. Watching: the seconds, on this process's
        monotonic clock, that the file has stayed the same while we looked (a living holder rewrites it every
        ttl/4); the age is never less than that."""
        text = conn.read_text(path, stage="lease")
        if text is None:
            self._watched.pop(board, None)
            return None
        seen = self._watched.get(board)
        if seen is None or seen[0] != text:
            seen = (text, time.monotonic())
            self._watched[board] = seen
        watched = time.monotonic() - seen[1]
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not an object")
            info = LeaseInfo(str(d["owner"]), str(d["since"]), str(d["expires"]), float(d["ttl"]), str(d["token"]),
                             str(d.get("purpose", "")), 0.0, str(d.get("board", "")))
        except (ValueError, KeyError, TypeError):
            d, info = {}, LeaseInfo("an unknown holder (the lease file is empty or damaged)", "?", "?", EMPTY_GRACE,
                                    "", "", 0.0)
        if _dead_here(d):
            info.age, info.clock, info.note = float("inf"), "holder", "its holder, a process of this machine, has ended"
            return info
        age: Optional[float] = None
        up = self._uptime(conn) if "board_uptime" in d else None
        if up is not None:
            if up[0] != d.get("board_boot"):
                age, info.note = float("inf"), "the board has restarted since"
            else:
                try:
                    age = up[1] - float(d["board_uptime"])
                except (TypeError, ValueError):
                    age = None
        else:
            try:
                mtime = float(conn.sftp_call("lease", f"looking at {path}", conn.sftp.stat, path).st_mtime)
            except BoardError:
                if not conn.exists(path, stage="lease"):
                    return None
                raise
            age = self._board_now(conn, folder) - mtime
            info.clock = "board clock"
        if age is not None and age < -2.0:  # refused: a negative age is a clock step (or a forged file)
            info.note = (f"its time lies {-age:.0f} s in the board's future (the board's clock stepped back?): "
                         "judged by watching it instead")
            age = None
        if age is None or watched > age:
            age, info.clock = watched, "watched"
        info.age = max(0.0, age)
        return info

    def _try_one(self, board: Board) -> Optional[LeaseInfo]:
        """Lease one board. None when leased; the holder's LeaseInfo when someone else holds it."""
        conn = self.conns.get(board.name)
        if conn is None:
            conn = Connection(board, timeout=self.connect_timeout).open()
            self.conns[board.name] = conn
        folder = conn.remote_path(board.workdir)
        conn.mkdirs(folder, stage="lease")
        path = f"{folder}/{LEASE_FILE}"
        uptime = self._uptime(conn)
        for _ in range(5):  # a lease that vanishes or is broken between our steps: look again
            try:
                conn.put_bytes(self._body(board.name, uptime), path, stage="lease", exclusive=True)
                self.paths[board.name] = path
                self._watched.pop(board.name, None)
                return None
            except FileExistsError:
                pass
            info = self._read(conn, path, folder, board.name)
            if info is None:
                continue
            if info.token == self.token:
                raise UserError(f"boards {info.board} and {board.name} of the rack file are one folder on one "
                                f"machine ({path}): give every board its own workdir (or host)")
            if not info.token and info.age < 5:  # being written by its creator this very moment
                time.sleep(0.2)
                continue
            with _held_lock:
                ours = info.token in _abandoned  # left behind by this process on a board that hung
            if not info.expired and not ours:
                return info
            self._break(conn, path, info, board)
        return self._read(conn, path, folder, board.name) or LeaseInfo("someone", "?", "?", 0, "", "", 0)

    def _break(self, conn: Connection, path: str, info: LeaseInfo, board: Board) -> None:
        """Remove an expired lease, unless it was replaced by a fresh one between our read and now."""
        aside = f"{path}.expired-{self.token}"
        try:
            conn.rename(path, aside, stage="lease")
        except BoardError:
            return  # gone already: another user broke it first
        text = conn.read_text(aside, stage="lease") or ""
        if info.token and info.token not in text:
            # not the lease we found expired: a fresh one; give it back (if nobody took the place meanwhile)
            try:
                conn.put_bytes(text.encode(), path, stage="lease", exclusive=True)
            except FileExistsError:
                pass
        else:
            why = (f"is void ({info.note})" if info.age == float("inf") else
                   f"expired {info.age - info.ttl:.0f} s ago" + (" (unchanged while we watched)"
                                                                 if info.clock == "watched" else ""))
            self.progress(f"  {board.name}: the lease of {info.owner} {why}; taking the board")
        conn.remove(aside, stage="lease")

    # --- the whole set -----------------------------------------------------------------------------------
    def acquire(self) -> "RackLease":
        """Lease every board of the set (all or none), retrying every RETRY_EVERY (1 s) for up to `wait` seconds,
        then refresh the leases in a thread every ttl/4 s; returns self. Boards that cannot be reached (connect,
        auth, host-key) are left out and named in `unreachable`. Raises LeaseHeld when a board is still held
        by another user at the deadline, BoardError for any other board failure."""
        deadline = time.monotonic() + self.wait
        said = False
        self._connect_all()
        while True:
            with _held_lock:  # boards another lease of this process holds already are not leased twice
                todo = [b for b in self.boards if _held.get(_key(b)) in (None, self)]
            holder = None
            self.unreachable.clear()
            try:
                for b in todo:
                    try:
                        info = self._try_one(b)
                    except BoardError as e:
                        if e.stage not in UNREACHABLE_STAGES:
                            raise
                        # nothing can change on a board we cannot reach: the job reports it (naming the
                        # board and the stage) and may use the others; it never touches an unleased board
                        self.unreachable[b.name] = e
                        self.conns.pop(b.name, None)
                        continue
                    if info is not None:
                        holder = (b, info)
                        break
            except BaseException:
                self._give_back()
                raise
            if holder is None:
                todo = [b for b in todo if b.name not in self.unreachable]
                with _held_lock:
                    for b in todo:
                        _held[_key(b)] = self
                    _unreachable.update({_key(b): e for b in self.boards if (e := self.unreachable.get(b.name))})
                self.boards = todo
                self._thread = threading.Thread(target=self._refresh_loop, name="splitrack-lease", daemon=True)
                self._thread.start()
                return self
            self._give_back()  # never sit on some boards while waiting for the others: no deadlock
            b, info = holder
            if time.monotonic() >= deadline:
                hint = " (waited {:.0f} s)".format(self.wait) if self.wait else "; wait for it with --wait SECONDS"
                raise LeaseHeld(f"board {b.name} is {info.describe()}{hint}")
            if not said:
                self.progress(f"board {b.name} is {info.describe()}; waiting up to {self.wait:.0f} s")
                said = True
            time.sleep(min(RETRY_EVERY, max(0.0, deadline - time.monotonic())))

    def _connect_all(self) -> None:
        """Open the connections to every board not connected yet, in parallel (an SSH handshake is most of
        what leasing a board costs; the leases themselves are then taken one board after another, in the
        rack's order, so two users who want the same boards never hold half each). Unreachable boards are
        left to _try_one, which records why; any other failure closes what was opened and is raised."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [b for b in self.boards if b.name not in self.conns]
        if len(todo) < 2:
            return

        def one(b: Board):
            try:
                return b, Connection(b, timeout=self.connect_timeout).open(), None
            except BoardError as e:
                return b, None, e

        with ThreadPoolExecutor(max_workers=min(32, len(todo))) as pool:
            results = list(pool.map(one, todo))
        for b, conn, e in results:
            if conn is not None:
                self.conns[b.name] = conn
        failed = [e for _, _, e in results if e is not None and e.stage not in UNREACHABLE_STAGES]
        if failed:
            self._give_back()
            raise failed[0]

    def _give_back(self) -> None:
        """Remove the lease files we created, close every connection. Boards in parallel, and a board that
        does not answer within GIVE_BACK_WAIT is left to its lease's expiry (this process breaks that lease
        at once should it lease the board again): a hung board must not hold up the error that names it."""
        def one(name: str, path: str) -> None:
            conn = self.conns.get(name)
            try:
                if conn is not None and self.token in (conn.read_text(path, stage="lease") or ""):
                    conn.remove(path, stage="lease")
                done.add(name)
            except BoardError:
                pass

        done: set = set()
        threads = [threading.Thread(target=one, args=(n, p), daemon=True) for n, p in self.paths.items()]
        for t in threads:
            t.start()
        end = time.monotonic() + GIVE_BACK_WAIT
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        if set(self.paths) - done:
            with _held_lock:
                _abandoned.add(self.token)
        self.paths.clear()
        for name, conn in self.conns.items():
            if name in done or not any(t.is_alive() for t in threads):
                conn.close()
        self.conns.clear()

    def _refresh_loop(self) -> None:
        every = max(0.2, self.ttl / 4)
        while not self._stop.wait(every):
            with self._io:
                if self._stop.is_set():
                    return
                for name, path in list(self.paths.items()):
                    if self._stop.is_set():
                        return
                    conn = self.conns.get(name)
                    if conn is None:
                        continue
                    try:
                        text = conn.read_text(path, stage="lease")
                        if text is None or self.token not in text:
                            self.lost = (f"the lease on board {name} was "
                                         + ("removed" if text is None else "taken over") + " while we held it")
                            continue
                        tmp = f"{path}.refresh-{self.token}"
                        conn.put_bytes(self._body(name, self._uptime(conn)), tmp, stage="lease")
                        conn.rename(tmp, path, stage="lease")
                    except BoardError:
                        pass  # a board that stops answering: the job on it fails by itself; try again later

    def check(self) -> None:
        """Raise LeaseLost when a lease of this set was lost while held."""
        if self.lost:
            raise LeaseLost(f"{self.lost}; another user may have used the board meanwhile: run again")

    def release(self) -> None:
        """Stop refreshing and remove this set's lease files (waiting at most GIVE_BACK_WAIT, 3 s, per step for
        hung boards, whose leases then expire by themselves)."""
        self._stop.set()
        # a refresher stuck on a hung board (each SFTP request may take SFTP_TIMEOUT) must not hold up the
        # release: wait a little for it, then give back without it (_give_back bounds its own waits)
        if self._thread is not None:
            self._thread.join(timeout=GIVE_BACK_WAIT)
        got = self._io.acquire(timeout=GIVE_BACK_WAIT)
        try:
            self._give_back()
        finally:
            if got:
                self._io.release()
        with _held_lock:
            for k in [k for k, v in _held.items() if v is self]:
                del _held[k]

    def __enter__(self) -> "RackLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def ensure(boards: List[Board], purpose: str, wait: float = 0.0, ttl: float = DEFAULT_TTL,
           progress: Callable[[str], None] = lambda s: None, connect_timeout: float = CONNECT_TIMEOUT):
    """A context that holds leases on `boards` for its duration: leases the ones this process does not
    hold yet (and gives those back at the end), leaves the ones it already holds alone. A board that
    cannot be reached is left unleased; `require(board)` then raises why."""
    with _held_lock:
        todo = [b for b in boards if _key(b) not in _held]
    if not todo:
        return _Nothing()
    return RackLease(todo, purpose, wait=wait, ttl=ttl, progress=progress, connect_timeout=connect_timeout)


def shared_connection(board: Board) -> Optional[Connection]:
    """A connection to `board` over the SSH transport of the lease this process holds on it (no second
    handshake; close it as usual), or None when no lease of this process has an open connection to it."""
    with _held_lock:
        held = _held.get(_key(board))
        conn = held.conns.get(board.name) if held is not None else None
    if conn is None:
        return None
    try:
        return conn.sibling()
    except BoardError:
        return None


def holds(board: Board) -> bool:
    """Whether this process holds a lease on `board`."""
    with _held_lock:
        return _key(board) in _held


def require(board: Board) -> None:
    """Raise unless this process holds `board`'s lease: the BoardError that kept it from leasing the board
    (unreachable), or BoardError(stage "lease")."""
    with _held_lock:
        if _key(board) in _held:
            return
        err = _unreachable.get(_key(board))
    if err is not None:
        raise err
    raise BoardError(board.name, "lease", "this process does not hold the board's lease; take it first "
                     "(harness.rack.lease.ensure)")
