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
from harness.rack.virtual_board import kill_home_processes
from splitting.user_cache import cache_root

READY_TIMEOUT = 20.0


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


def start_board(state: Path, name: str, host: str = "127.0.0.1", port: Optional[int] = None,
                data_port: Optional[int] = None, memory_mb: int = 512, memory_free_mb: Optional[int] = None,
                disk_mb: float = 2048, faults: List[str] = (), netns: Optional[str] = None,
                timing: Optional[str] = None, known_hosts: Optional[Path] = None) -> (Board, BoardProcess):
    """Start one virtual board process; returns its rack entry and its process. Waits until it speaks SSH."""
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
    port = port or _free_port(host)
    data_port = data_port or _free_port(host)
    listen = "0.0.0.0" if netns else host
    argv = [sys.executable, "-m", "harness.rack.virtual_board", "--name", name, "--home", str(bdir / "home"),
            "--listen", listen, "--port", str(port), "--host-key", str(host_key),
            "--authorized-keys", str(state / "authorized_keys"), "--memory-mb", str(memory_mb),
            "--disk-mb", str(disk_mb)]
    if memory_free_mb is not None:
        argv += ["--memory-free-mb", str(memory_free_mb)]
    for f in faults:
        argv += ["--fault", f]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(bdir / "board.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=str(bdir))
    log.close()
    if not _ssh_ready(host, port, READY_TIMEOUT):
        proc.kill()
        tail = (bdir / "board.log").read_text(errors="replace")[-600:]
        raise UserError(f"virtual board {name} did not start on {host}:{port}: {tail.strip()}")
    known_hosts = known_hosts or state / "known_hosts"
    entry = host if port == 22 else f"[{host}]:{port}"
    with open(known_hosts, "a") as f:
        kind, b64 = hk.export_public_key("openssh").decode().split()[:2]
        f.write(f"{entry} {kind} {b64}\n")
    board = Board(name=name, host=host, kind="virtual-pynq-z2", key=key, port=port, user="xilinx",
                  known_hosts=known_hosts, host_key_policy="strict", data_port=data_port, timing=timing)
    return board, BoardProcess(name, proc.pid, str(bdir / "home"), netns)


def stop_board(bp: BoardProcess, timeout: float = 10.0) -> None:
    """Stop a board process this rack started (checked by its command line), and what it started."""
    try:
        cmdline = Path(f"/proc/{bp.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if b"harness.rack.virtual_board" in cmdline and bp.home.encode() in cmdline:
        try:
            os.kill(bp.pid, signal.SIGCONT)  # a frozen board (fault tests) must be able to exit
            os.kill(bp.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{bp.pid}").exists():
            try:
                if os.waitpid(bp.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
        else:
            if Path(f"/proc/{bp.pid}").exists():
                try:
                    os.kill(bp.pid, signal.SIGKILL)
                    os.waitpid(bp.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
    kill_home_processes(Path(bp.home))


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
        raise UserError(f"--boards {n}: start between 1 and 64 virtual boards")
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
    try:
        if netns:
            _netns_up(k, n, rate, ns_names)
        for i in range(n):
            bname = f"vpynq{i}"
            if netns:
                b, p = start_board(state, bname, host=f"10.77.{k}.{10 + i}", port=22, data_port=7700,
                                   memory_mb=memory_mb, disk_mb=disk_mb, netns=ns_names[i], timing=timing)
            else:
                b, p = start_board(state, bname, memory_mb=memory_mb, disk_mb=disk_mb, timing=timing)
            boards.append(b)
            procs.append(p)
            record["pids"].append(p.__dict__)
            progress(f"  {b.name}: ssh {b.user}@{b.host}:{b.port}, agent port {b.data_port}"
                     + (f", netns {p.netns}" if netns else ""))
    except BaseException:
        for p in procs:
            stop_board(p)
        if netns:
            _netns_down(k, record["netns"])
        shutil.rmtree(state, ignore_errors=True)
        raise
    (state / "rack.json").write_text(json.dumps(record, indent=1))
    rack = Rack(name, boards, None, state.resolve())
    write_rack(rack, out, comment=(
        f"A virtual rack of {n} PYNQ-Z2 boards started by `splitrack rack up`"
        + (f" in network namespaces (links {rate or 'not rate-limited'})" if netns else "")
        + f".\nStop it with `splitrack rack down {out}`."))
    return load_rack(out)


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
    for p in procs:
        stop_board(p)
    if record.get("netns_index"):
        _netns_down(record["netns_index"], record["netns"])
    shutil.rmtree(rack.virtual_state, ignore_errors=True)
    return len(procs)
