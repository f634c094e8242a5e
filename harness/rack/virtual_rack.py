"""A rack of virtual PYNQ-Z2 boards on this machine: start them, write their boards.toml, stop them.

Each board is its own process (`harness.rack.virtual_board`): an SSH server with its own host key, home folder,
address and port. The rack gets one client key, authorised on every board, and a known_hosts file that
holds every board's host key, so the rack file uses strict host-key checking like a lab rack would.

Network-namespace mode (root only): each board runs in its own network namespace, linked to a bridge in
this namespace by a veth pair, with its own IP address (10.77.<rack>.<10+i>) and the standard ports. The
kernel can then rate-limit each link (`rate="1gbit"` puts a tbf qdisc on both ends of the veth, as a 1 GbE
link would limit the board). netem does not work on this machine, so there is no delay or loss model.

Everything a rack owns lives in its state folder (keys, homes, logs, rack.json with the process ids), so
`rack_down` stops exactly what `rack_up` started.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import asyncssh

from splitting.errors import UserError

from harness.rack.rackfile import Board, Rack, RackError, RackStopped, load_rack, write_rack
from harness.rack.virtual_board import home_processes
from splitting.user_cache import cache_root

READY_TIMEOUT = 20.0
PYNQ_VERSION = "3.0.1"  # the PYNQ image the boards of `rack up` play (virtual_board --pynq-version)


def _os_port(host: str) -> int:
    """A port the kernel says is free now (bound to port 0, then released: it can be handed out again)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_port(host: str = "127.0.0.1", taken: Optional[set] = None) -> int:
    """A free port that is not in `taken` (the ports already handed out to this rack's boards, SSH and data
    ports alike); the port is added to `taken`. The kernel may give a released port 0 port again, so two
    boards of one rack would otherwise be able to draw the same one."""
    for _ in range(1000):
        port = _os_port(host)
        if taken is None:
            return port
        if port not in taken:
            taken.add(port)
            return port
    raise UserError(f"no free port on {host} that this rack has not handed out already")


def _ssh_ready(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.settimeout(2.0)
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _run(argv: List[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise UserError(f"`{' '.join(argv)}` failed: {r.stderr.strip()}")


@dataclass
class BoardProcess:
    """One running virtual board of a rack: its name, process id, home folder, and network namespace (None
    without --netns)."""

    name: str
    pid: int
    home: str
    netns: Optional[str] = None


def default_state(out: Path) -> Path:
    """The state folder of the virtual rack whose rack file is `out`: <cache>/racks/<stem>-<first 8 hex digits
    of SHA-256 of the resolved path> ($SPLITRACK_CACHE honoured through cache_root)."""
    out = Path(out).resolve()
    tag = hashlib.sha256(str(out).encode()).hexdigest()[:8]
    return cache_root() / "racks" / f"{out.stem}-{tag}"


def _keys(state: Path) -> Path:
    """The rack's client key (ed25519, OpenSSH format, no passphrase) and its authorized_keys."""
    key = state / "client_ed25519"
    if not key.exists():
        k = asyncssh.generate_private_key("ssh-ed25519", comment="splitrack-virtual-rack")
        k.write_private_key(str(key))
        key.chmod(0o600)
        k.write_public_key(str(state / "authorized_keys"))
    return key


class _Forked:
    """A board process forked by the zygote (not a child of this process): its pid, and kill()."""

    def __init__(self, pid: int):
        self.pid = pid

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _board_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class _Zygote:
    """One `python -m harness.rack.virtual_board --zygote` process that forks boards on request (see
    virtual_board.zygote): a rack of many boards pays Python's and asyncssh's start-up once."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.rack.virtual_board", "--zygote"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=_board_env(), cwd=str(cwd), start_new_session=True)

    def fork(self, argv: List[str], cwd: Path, log: Path) -> _Forked:
        """Start one board (`argv`: virtual_board's options) in folder `cwd`, output to `log`. Raises
        UserError when the zygote is gone."""
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log)}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            return _Forked(int(line))
        except (OSError, ValueError):
            raise UserError(f"the virtual boards' start-up process ended (exit {self.proc.poll()}); "
                            "run `python -m harness.rack.virtual_board --zygote` to see why") from None

    def close(self) -> None:
        """End the zygote (its boards run on); waits for it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class _Starting:
    """A board process spawned by _spawn_board, not yet known to speak SSH."""

    name: str
    host: str
    port: int
    data_port: int
    proc: object  # subprocess.Popen, or _Forked by the zygote: .pid and .kill()
    bdir: Path
    host_key: object
    key: Path
    netns: Optional[str]
    timing: Optional[str]
    pynq_version: Optional[str] = None


def _spawn_board(state: Path, name: str, host: str = "127.0.0.1", port: Optional[int] = None,
                 data_port: Optional[int] = None, memory_mb: int = 512, memory_free_mb: Optional[int] = None,
                 disk_mb: float = 2048, faults: List[str] = (), netns: Optional[str] = None,
                 timing: Optional[str] = None, taken: Optional[set] = None,
                 zygote: Optional[_Zygote] = None, pynq_version: Optional[str] = None) -> _Starting:
    """Start one virtual board process without waiting for it (ports not given are drawn with _free_port,
    never one of `taken`); forked by `zygote` when one is given (not for a board in a network namespace)."""
    state = Path(state).resolve()  # the board process runs in its own folder: paths must be absolute
    state.mkdir(parents=True, exist_ok=True)
    key = _keys(state)
    bdir = state / name
    bdir.mkdir(exist_ok=True)
    host_key = bdir / "ssh_host_ed25519_key"
    if not host_key.exists():
        hk = asyncssh.generate_private_key("ssh-ed25519")
        hk.write_private_key(str(host_key))
        host_key.chmod(0o600)
    else:
        hk = asyncssh.read_private_key(str(host_key))
    port = port or _free_port(host, taken)
    data_port = data_port or _free_port(host, taken)
    listen = "0.0.0.0" if netns else host
    argv = [sys.executable, "-m", "harness.rack.virtual_board", "--name", name, "--home", str(bdir / "home"),
            "--listen", listen, "--port", str(port), "--host-key", str(host_key),
            "--authorized-keys", str(state / "authorized_keys"), "--memory-mb", str(memory_mb),
            "--disk-mb", str(disk_mb)]
    if memory_free_mb is not None:
        argv += ["--memory-free-mb", str(memory_free_mb)]
    for f in faults:
        argv += ["--fault", f]
    if pynq_version:
        argv += ["--pynq-version", pynq_version]
    if zygote is not None and not netns:
        proc = zygote.fork(argv[3:], bdir, bdir / "board.log")
        return _Starting(name, host, port, data_port, proc, bdir, hk, key, netns, timing, pynq_version)
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    log = open(bdir / "board.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=_board_env(), cwd=str(bdir))
    log.close()
    return _Starting(name, host, port, data_port, proc, bdir, hk, key, netns, timing, pynq_version)


def _board_process(st: _Starting) -> BoardProcess:
    return BoardProcess(st.name, st.proc.pid, str(st.bdir / "home"), st.netns)


def _finish_board(st: _Starting, state: Path, timeout: float, known_hosts: Optional[Path] = None) -> Board:
    """Wait (at most `timeout` seconds) until a spawned board speaks SSH, then add its host key to the
    rack's known_hosts; returns its rack entry. Raises UserError (the process killed) when it does not."""
    if not _ssh_ready(st.host, st.port, max(timeout, 0.5)):
        st.proc.kill()
        tail = (st.bdir / "board.log").read_text(errors="replace")[-600:]
        raise UserError(f"virtual board {st.name} did not start on {st.host}:{st.port}: {tail.strip()}")
    known_hosts = known_hosts or Path(state).resolve() / "known_hosts"
    entry = st.host if st.port == 22 else f"[{st.host}]:{st.port}"
    with open(known_hosts, "a") as f:
        kind, b64 = st.host_key.export_public_key("openssh").decode().split()[:2]
        f.write(f"{entry} {kind} {b64}\n")
    return Board(name=st.name, host=st.host, kind="virtual-pynq-z2", key=st.key, port=st.port, user="xilinx",
                 known_hosts=known_hosts, host_key_policy="strict", data_port=st.data_port, timing=st.timing,
                 pynq_version=st.pynq_version)


def start_board(state: Path, name: str, host: str = "127.0.0.1", port: Optional[int] = None,
                data_port: Optional[int] = None, memory_mb: int = 512, memory_free_mb: Optional[int] = None,
                disk_mb: float = 2048, faults: List[str] = (), netns: Optional[str] = None,
                timing: Optional[str] = None, known_hosts: Optional[Path] = None,
                taken: Optional[set] = None, pynq_version: Optional[str] = None) -> (Board, BoardProcess):
    """Start one virtual board process; returns its rack entry and its process. Waits until it speaks SSH.
    faults: virtual_board.FAULTS; pynq_version: the PYNQ image it plays (and its rack entry states)."""
    st = _spawn_board(state, name, host, port, data_port, memory_mb, memory_free_mb, disk_mb, faults, netns,
                      timing, taken, pynq_version=pynq_version)
    board = _finish_board(st, state, READY_TIMEOUT, known_hosts)
    return board, _board_process(st)


def stop_board(bp: BoardProcess, timeout: float = 10.0) -> None:
    """Stop a board process this rack started (checked by its command line), and what it started."""
    stop_boards([bp], timeout)


def _ours(bp: BoardProcess) -> bool:
    """Whether bp.pid is still the board process this rack started, and not a zombie: its command line names
    the module, and either names its home (started alone) or it works in its home or the board's folder
    around it (forked by the zygote, whose command line it shares)."""
    try:
        cmdline = Path(f"/proc/{bp.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{bp.pid}/stat").read_text()
        cwd = os.readlink(f"/proc/{bp.pid}/cwd")
    except OSError:
        return False
    if stat[stat.rindex(")") + 2:].startswith("Z"):
        _reap(bp.pid)
        return False
    if b"harness.rack.virtual_board" not in cmdline:
        return False
    home = str(Path(bp.home).resolve())
    return bp.home.encode() in cmdline or cwd in (home, str(Path(home).parent))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_boards(procs: List[BoardProcess], timeout: float = 10.0) -> List[str]:
    """Stop many board processes at once: SIGTERM to all of them, wait for them under one shared deadline,
    SIGKILL what is left, then end what they started (one scan of /proc) and check nothing is left. Returns
    the names of the boards still running after all that (normally none)."""
    for bp in procs:
        if _ours(bp):
            try:
                os.kill(bp.pid, signal.SIGCONT)  # a frozen board (fault tests) must be able to exit
                os.kill(bp.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    left = [bp for bp in procs if _ours(bp)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [bp for bp in left if _ours(bp)]
    for bp in left:
        try:
            os.kill(bp.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    homes = [bp.home for bp in procs]
    for pid in home_processes(*homes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_deadline = time.monotonic() + 5.0
    while time.monotonic() < kill_deadline:
        left = [bp for bp in procs if _ours(bp)]
        if not left and not home_processes(*homes):
            return []
        time.sleep(0.05)
    return [bp.name for bp in procs if _ours(bp)] + [f"pid {p}" for p in home_processes(*homes)]


# --- network namespaces --------------------------------------------------------------------------------
_NETNS_LOCK = Path("/run/lock/splitrack-netns.lock") if Path("/run/lock").is_dir() else Path("/tmp/splitrack-netns.lock")


def _claim_netns_index() -> int:
    """Pick a free rack index and create its bridge, under a machine-wide lock: two racks starting at the same
    time must not both take index k (and one's clean-up then delete the other's bridge)."""
    from filelock import FileLock

    with FileLock(str(_NETNS_LOCK), timeout=60):
        used = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        ns_used = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for k in range(1, 250):
            if f"srbr{k}:" in used or f"srbr{k}@" in used or f"sr{k}b0" in ns_used:
                continue
            _run(["ip", "link", "add", f"srbr{k}", "type", "bridge"])
            return k
    raise UserError("no free network-namespace rack index; stop old racks with `splitrack rack down`")


def _netns_up(k: int, n: int, rate: Optional[str], names: List[str]) -> None:
    """Namespaces, veth links and addresses of rack `k` (its bridge exists); `names` receives every namespace
    as soon as it exists, so that a failure half-way can be cleaned up."""
    br = f"srbr{k}"
    _run(["ip", "addr", "add", f"10.77.{k}.1/24", "dev", br])
    _run(["ip", "link", "set", br, "up"])
    for i in range(n):
        ns, hv, nv = f"sr{k}b{i}", f"sr{k}h{i}", f"sr{k}n{i}"
        _run(["ip", "netns", "add", ns])
        names.append(ns)
        _run(["ip", "link", "add", hv, "type", "veth", "peer", "name", nv])
        _run(["ip", "link", "set", nv, "netns", ns])
        _run(["ip", "link", "set", hv, "master", br])
        _run(["ip", "link", "set", hv, "up"])
        ex = ["ip", "netns", "exec", ns]
        _run(ex + ["ip", "link", "set", "lo", "up"])
        _run(ex + ["ip", "link", "set", nv, "name", "eth0"])
        _run(ex + ["ip", "addr", "add", f"10.77.{k}.{10 + i}/24", "dev", "eth0"])
        _run(ex + ["ip", "link", "set", "eth0", "up"])
        _run(ex + ["ip", "route", "add", "default", "via", f"10.77.{k}.1"])
        if rate:
            # both directions of the link: the board's uplink and the switch port towards the board
            tbf = ["tbf", "rate", rate, "burst", "64kb", "latency", "50ms"]
            _run(ex + ["tc", "qdisc", "add", "dev", "eth0", "root"] + tbf)
            _run(["tc", "qdisc", "add", "dev", hv, "root"] + tbf)


def _netns_down(k: int, names: List[str]) -> None:
    """Delete rack k's namespaces (their veth ends go with them) and its bridge."""
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", f"srbr{k}"], capture_output=True, timeout=30)


# --- racks ---------------------------------------------------------------------------------------------
def refuse_running(out) -> None:
    """Raise UserError when `out` is the rack file of a virtual rack that is running (`rack up` must not
    start a second rack over it: the first one's boards would be orphaned)."""
    out = Path(out)
    if not out.exists():
        return
    try:
        old = load_rack(out)
    except RackError:  # stopped, a real rack's file, or not a rack file: nothing running to orphan
        return
    if old.virtual_state and (old.virtual_state / "rack.json").exists():
        raise UserError(f"{out} belongs to a running virtual rack; stop it first with `splitrack rack down {out}`")


def rack_up(n: int, out, state: Optional[Path] = None, name: str = "virtual", netns: bool = False,
            rate: Optional[str] = None, timing: Optional[str] = None, memory_mb: int = 512,
            disk_mb: int = 2048, progress=print) -> Rack:
    """Start `n` virtual boards and write their rack file to `out`."""
    if n < 1 or n > 64:
        raise UserError(f"--n-boards {n}: start between 1 and 64 virtual boards")
    if rate and not netns:
        raise UserError("--rate needs --netns: only a namespace's veth link can be rate-limited")
    out = Path(out)
    if out.parent != Path("") and not out.parent.is_dir():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create its folder ({e.strerror or e})") from None
    refuse_running(out)
    state = Path(state) if state else default_state(out)
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    procs: List[BoardProcess] = []
    boards: List[Board] = []
    if netns and os.geteuid() != 0:
        raise UserError("network-namespace mode needs root (it creates namespaces, veth links and a bridge)")
    k = _claim_netns_index() if netns else 0
    record = {"pids": [], "netns": [], "netns_index": k if netns else None}
    ns_names: List[str] = record["netns"]
    taken: set = set()  # every port handed out to a board of this rack: none is handed out twice
    started: List[_Starting] = []
    zygote = None
    try:
        if netns:
            _netns_up(k, n, rate, ns_names)
        else:
            zygote = _Zygote(state)
        # start every board process first, then wait for all of them under one deadline
        for i in range(n):
            bname = f"vpynq{i}"
            if netns:
                st = _spawn_board(state, bname, host=f"10.77.{k}.{10 + i}", port=22, data_port=7700,
                                  memory_mb=memory_mb, disk_mb=disk_mb, netns=ns_names[i], timing=timing,
                                  pynq_version=PYNQ_VERSION)
            else:
                st = _spawn_board(state, bname, memory_mb=memory_mb, disk_mb=disk_mb, timing=timing,
                                  taken=taken, zygote=zygote, pynq_version=PYNQ_VERSION)
            started.append(st)
            p = _board_process(st)
            procs.append(p)
            record["pids"].append(p.__dict__)
        (state / "rack.json").write_text(json.dumps(record, indent=1))
        if zygote is not None:
            zygote.close()
        deadline = time.monotonic() + READY_TIMEOUT + 0.5 * n  # 2 cores start 64 Pythons in ~10-20 s
        for st in started:
            boards.append(_finish_board(st, state, deadline - time.monotonic()))
        for b, p in zip(boards, procs):
            progress(f"  {b.name}: ssh {b.user}@{b.host}:{b.port}, agent port {b.data_port}"
                     + (f", netns {p.netns}" if netns else ""))
        rack = Rack(name, boards, None, state.resolve())
        write_rack(rack, out, comment=(
            f"A virtual rack of {n} PYNQ-Z2 boards started by `splitrack rack up`"
            + (f" in network namespaces (links {rate or 'not rate-limited'})" if netns else "")
            + f".\nStop it with `splitrack rack down {out}`."))
        return load_rack(out)
    except BaseException:
        # a failed `rack up` leaves no board running, wherever it failed
        if zygote is not None:
            zygote.close()
        stop_boards(procs)
        if netns:
            _netns_down(k, record["netns"])
        shutil.rmtree(state, ignore_errors=True)
        raise


def rack_down(path) -> int:
    """Stop the virtual rack of a rack file; returns the number of boards stopped (0: it was already
    stopped). Raises UserError for a missing file or a rack that is not virtual."""
    try:
        rack = load_rack(path)
    except RackStopped:
        return 0
    if rack.virtual_state is None:
        raise UserError(f"{path} is not a virtual rack started by `splitrack rack up` (it has no virtual_state)")
    f = rack.virtual_state / "rack.json"
    if not f.exists():
        raise UserError(f"{path}: its virtual rack is not running (no {f})")
    record = json.loads(f.read_text())
    procs = [BoardProcess(**p) for p in record["pids"]]
    left = stop_boards(procs)
    if left:
        raise UserError(f"{path}: could not stop {', '.join(left)}; its state stays in {rack.virtual_state}")
    if record.get("netns_index"):
        _netns_down(record["netns_index"], record["netns"])
    shutil.rmtree(rack.virtual_state, ignore_errors=True)
    return len(procs)
