"""Starting and stopping a board's agent over SSH, and asking it how it is (an authenticated PING).

The agent's package runs in the board's workdir as `python3 -m harness.agent part/agent.json` (harness/agent/
files.py lists what is shipped); its pidfile, log and output file lie beside its config in part/, and the
deployment's secret in part/agent.secret (mode 0600)."""
from __future__ import annotations

import json
import re
import socket
import time
from typing import Callable, Dict, Optional, Tuple

from harness.agent import wire
from harness.agent.files import MODULE as AGENT_MODULE
from harness.rack.rackfile import Board
from harness.rack.ssh import BoardError, Connection

PART = "part"
SECRET_FILE = "agent.secret"  # in part/, beside agent.json (whose secret_file names it)
AGENT_START_TIMEOUT = 30.0  # python + numpy import + loading the library (a real board: programming the PL)
AGENT_STOP_TIMEOUT = 5.0
PING_TIMEOUT = 3.0
AGENT_POLL = 0.05  # s between pings of a starting agent's port (refused at once while nobody listens)
AGENT_LOOK = 0.5  # s between looks (one SFTP stat) at a starting agent's output meanwhile
AGENT_ALIVE = 2.0  # s between looks at its process when its output says nothing (killed without a word?)
AGENT_POLL_NO_SECRET = 0.1  # s between looks at its output when its port cannot be pinged


def agent_identity(config: dict) -> Tuple[bytes, bytes]:
    """(the agent's identity, the host's) in the handshake with the agent of an agent config (agent.json as
    a dict): what the host's connection to it is bound to (wire.agent_id, wire.peer_id). ValueError for a
    config without what that needs."""
    try:
        plan_hash, partition = str(config["plan_hash"]), str(config["partition"])
        endpoint = str(config.get("endpoint") or "")
        if endpoint:
            host, _, port = endpoint.rpartition(":")
        else:
            host, port = str(config["listen"]["host"]), config["listen"]["port"]
        return wire.agent_id(plan_hash, partition, host, int(port)), wire.peer_id(plan_hash, wire.HOST)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"agent config without a usable identity ({type(e).__name__}: {e})") from None


def board_identity(conn: Connection, board: Board) -> Tuple[bytes, bytes]:
    """agent_identity of the agent config a board carries (part/agent.json, read over SSH); ValueError when it
    has none or it cannot be read as one."""
    text = conn.read_text(conn.remote_path(f"{board.workdir}/{PART}/agent.json"), stage="health")
    if text is None:
        raise ValueError("the board carries no agent config (nothing deployed)")
    return agent_identity(json_object(text))


def ping(host: str, port: int, secret: bytes, timeout: float = PING_TIMEOUT, *, ident: Tuple[bytes, bytes]) -> dict:
    """The agent's health answer (PONG, a JSON object) over an authenticated connection bound to `ident`
    ((the agent's identity, the host's): agent_identity), or OSError/TimeoutError: an agent that does not
    share `secret`, or is not the agent meant, refuses the connection (wire.AuthError, an OSError here); an
    answer that is not a PONG holding a JSON object is an OSError naming what came."""
    try:
        with wire.connect((host, port), secret, timeout, ident[0], ident[1]) as s:
            s.settimeout(timeout)
            s.sendall(wire.pack_message(wire.MsgType.PING, payload=b"{}"))
            mtype, *_rest, payload = wire.Reader(s, max_records=0).message()
    except (EOFError, wire.ProtocolError) as e:
        raise OSError(str(e) or type(e).__name__) from None
    if mtype != wire.MsgType.PONG:
        raise OSError(f"agent answered message type {mtype}, not PONG")
    return wire.json_object(payload, "PONG")


def write_secret(conn: Connection, root: str, secret: bytes) -> None:
    """The deployment's secret onto the board, part/agent.secret, mode 0600 before it holds a byte; the
    running agent reads it at each new connection. Never logged."""
    tmp, path = f"{root}/{PART}/{SECRET_FILE}.upload", f"{root}/{PART}/{SECRET_FILE}"
    # the connection's own writes: a board that stops answering is named as hung (no reply within the SFTP
    # timeout), a full disk as full; never an error with an empty reason
    conn.put_bytes((secret.hex() + "\n").encode(), tmp, stage="upload", mode=0o600)
    conn.rename(tmp, path, stage="upload")


def remote_pids(conn: Connection, part_dir: str) -> Dict[str, int]:
    """{pidfile name: pid} of the agents' pidfiles in a board's part/ folder (none when it is missing)."""
    pids = {}
    try:
        names = conn.sftp.listdir(part_dir)
    except IOError:
        return pids
    for n in names:
        if n.startswith("agent-") and n.endswith(".pid"):
            text = conn.read_text(f"{part_dir}/{n}") or ""
            if text.strip().isdigit():
                pids[n] = int(text.strip())
    return pids


def json_object(text: Optional[str]) -> dict:
    """A JSON object a board gave (a file, a line of output), {} for anything else (missing, not JSON, nested
    beyond the parser's depth, not an object): never an exception."""
    try:
        d = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    return d if isinstance(d, dict) else {}


def alive(conn: Connection, pid: int) -> bool:
    """Whether the board runs process `pid`. A zombie (exited, not yet reaped by init) counts as gone:
    `kill -0` would still succeed on it."""
    try:
        stat = conn.read_text(f"/proc/{pid}/stat", stage="agent-stop")
    except BoardError:
        # A process reaped between the SFTP open and read makes the read fail (ESRCH), which OpenSSH's
        # sftp-server reports as a bare "Failure". Gone is gone; anything else fails a second time.
        if not conn.exists(f"/proc/{pid}", stage="agent-stop"):
            return False
        stat = conn.read_text(f"/proc/{pid}/stat", stage="agent-stop")
    if stat is None:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def stop_agents(conn: Connection, board: Board, pids: Optional[Dict[str, int]] = None) -> int:
    """Stop every agent of this board's part/ folder (SIGTERM, then SIGKILL); returns how many ran. pids:
    its pid files as remote_pids read them, when the caller (holding the board's lease) has just done so."""
    part_dir = conn.remote_path(f"{board.workdir}/{PART}")
    sudo = ["sudo", "-n"] if board.sudo else []
    n = 0
    for fname, pid in (remote_pids(conn, part_dir) if pids is None else pids).items():
        if alive(conn, pid):
            n += 1
            conn.run(sudo + ["kill", "-TERM", str(pid)], check=False, timeout=10, stage="agent-stop")
            deadline = time.monotonic() + AGENT_STOP_TIMEOUT
            pause = 0.05  # growing: every look is four SFTP requests, and a busy board's agent takes a while
            while alive(conn, pid) and time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(0.25, pause * 1.5)
            if alive(conn, pid):
                conn.run(sudo + ["kill", "-KILL", str(pid)], check=False, timeout=10, stage="agent-stop")
                time.sleep(0.1)
                if alive(conn, pid):
                    raise BoardError(board.name, "agent-stop", f"agent pid {pid} survives SIGKILL; power-cycle the board")
        conn.remove(f"{part_dir}/{fname}", stage="agent-stop")
    return n


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port now (seen from this machine)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_holder(conn: Connection, board: Board) -> Optional[Tuple[int, str, str]]:
    """(pid, working folder, command line) of the board's process listening on its data port, from `ss -ltnp`
    and /proc (over SFTP); None when the board cannot say (no `ss`, or another user's process)."""
    r = conn.run(["ss", "-Hltnp", f"sport = :{board.data_port}"], check=False, timeout=10, stage="agent-start")
    m = re.search(r"pid=(\d+)", r.stdout)
    if r.status != 0 or not m:
        return None
    pid = int(m.group(1))
    try:
        cwd = conn.sftp_call("agent-start", f"reading /proc/{pid}/cwd", conn.sftp.readlink, f"/proc/{pid}/cwd")
        cmd = (conn.read_text(f"/proc/{pid}/cmdline", stage="agent-start") or "").replace("\0", " ").strip()
    except BoardError:
        return None
    return pid, str(cwd or "?"), cmd


# an agent's command line: the package's module (`-m harness.agent`), or an older splitrack's flat agent
_AGENT_COMMAND = re.compile(r"(^|\s|/)(-m (%s|agent)|agent\.py)(\s|$)" % re.escape(AGENT_MODULE))


def agent_folder(holder: Tuple[int, str, str]) -> Optional[str]:
    """The workdir of a data port's holder (pid, cwd, command line: _port_holder) when it is a splitrack agent
    (of any version: `-m harness.agent`, `-m agent`, agent.py), None when it is another program."""
    pid, cwd, cmd = holder
    if not _AGENT_COMMAND.search(cmd):
        return None
    return cwd.rsplit(f"/{PART}", 1)[0] if cwd.endswith(f"/{PART}") else cwd


def other_workdir_agent(conn: Connection, board: Board) -> Optional[Tuple[int, str]]:
    """(pid, workdir) of a splitrack agent of another workdir in this board user's home holding the board's
    data port (one deploy stops with free_data_port, unless that workdir is leased); None otherwise."""
    holder = _port_holder(conn, board)
    folder = agent_folder(holder) if holder else None
    home = conn.home.rstrip("/")
    if folder is None or not folder.startswith(home + "/") or folder == conn.remote_path(board.workdir):
        return None
    return holder[0], folder


def free_data_port(conn: Connection, board: Board, root: str, progress: Callable[[str], None]) -> None:
    """Before an agent starts: the board's data port must be free. When it is held (the rack file's workdir
    changed and the agent of the old one still runs there, or any other process), the holder is found: a
    splitrack agent of another workdir in the board user's home that nobody holds a lease on is stopped,
    saying so; otherwise BoardError names it (pid, folder, command, leaseholder) and what to do."""
    if not _port_open(board.host, board.data_port):
        return
    holder = _port_holder(conn, board)
    where = f"{board.host}:{board.data_port}"
    if holder is None:
        raise BoardError(board.name, "agent-start", f"{where} is held by a process this board does not name (no `ss`, "
                         "or another user's): stop it, or give the board another data_port in the rack file")
    pid, cwd, cmd = holder
    folder = agent_folder(holder)
    if folder is None:
        raise BoardError(board.name, "agent-start", f"{where} is held by pid {pid} ({cmd[:80]!r} in {cwd}), not a "
                         "splitrack agent: stop it, or give the board another data_port in the rack file")
    home = conn.home.rstrip("/")
    if folder != root and not folder.startswith(home + "/"):  # not this board user's: never ours to stop
        raise BoardError(board.name, "agent-start", f"{where} is held by an agent working in {folder} (pid {pid}), "
                         f"outside this board user's home {home}: stop it, or give the board another data_port")
    if folder != root:  # an agent of another workdir: in use if someone leases that workdir
        from harness.rack.lease import LEASE_FILE, RackLease

        info = RackLease([board], "probe")._read(conn, f"{folder}/{LEASE_FILE}", folder, board.name)
        if info is not None and not info.expired:
            raise BoardError(board.name, "agent-start", f"{where} is held by the agent of workdir {folder} (pid {pid}), "
                             f"{info.describe()}: this rack file's workdir is {root}; use the same workdir, or another "
                             "data_port")
    sudo = ["sudo", "-n"] if board.sudo else []
    conn.run(sudo + ["kill", "-TERM", str(pid)], check=False, timeout=10, stage="agent-stop")
    deadline = time.monotonic() + AGENT_STOP_TIMEOUT
    while alive(conn, pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(conn, pid):
        conn.run(sudo + ["kill", "-KILL", str(pid)], check=False, timeout=10, stage="agent-stop")
    progress(f"  {board.name}: stopped the agent of workdir {folder} (pid {pid}) that held port {board.data_port} "
             f"(this rack file's workdir is {root})")


def start_agent(conn: Connection, board: Board, partition: str, secret: Optional[bytes] = None,
                ident: Optional[Tuple[bytes, bytes]] = None) -> int:
    """Start the agent of part/agent.json in the background; wait for its ready line. Returns its pid.

    The agent runs as `python3 -m harness.agent part/agent.json` in the workdir. The previous agent's log is moved
    aside first (agent-<partition>.log.1) and its output file removed, so that what an agent that cannot
    start says, and the ready line found, are its own. An agent that exits is reported with its output, not
    after the start timeout.

    With the deployment's `secret`, readiness is watched on the agent's own port: a connection attempt to a
    port nobody listens on yet is refused by the board's kernel (no process on the board does any work), so
    it is tried every AGENT_POLL s. Meanwhile the output file is looked at every AGENT_LOOK s (without the
    secret: every AGENT_POLL_NO_SECRET s), with one SFTP stat, and read only when it has grown (a ready line
    or an error); the process is looked at when the output grew without a ready line, and every
    AGENT_ALIVE s (an agent killed without a word). Every SFTP request costs both sides' SSH stacks some
    CPU: with many boards starting on a few cores, reading the output and the process every 0.1 s was a
    good part of what a deployment cost. `ident`: the agent's agent_identity (read from the board's
    part/agent.json when not given)."""
    part_dir = conn.remote_path(f"{board.workdir}/{PART}")
    out = f"agent-{partition}.out"
    if secret is not None and ident is None:
        try:
            ident = board_identity(conn, board)
        except ValueError:
            secret = None  # no identity to watch its port with: its output file says when it is ready
    log = f"{part_dir}/agent-{partition}.log"
    if conn.exists(log, stage="agent-start"):
        conn.rename(log, f"{log}.1", stage="agent-start")
    # the shell truncates the output file in the background child, maybe after this side has looked at it:
    # the previous agent's ready line must not be there to be found
    conn.remove(f"{part_dir}/{out}", stage="agent-start")
    # a module run in the workdir, not a script: a script is compiled from source at every start, a module's
    # bytecode is cached in __pycache__; and the package imports as it does on the host
    argv = (["sudo", "-n"] if board.sudo else []) + ["setsid", board.python, "-m", AGENT_MODULE,
                                                     f"{PART}/agent.json"]
    launched = conn.start_background(argv, cwd=conn.remote_path(board.workdir), output=f"{PART}/{out}",
                                     stage="agent-start")
    now = time.monotonic()
    deadline = now + AGENT_START_TIMEOUT
    poll = AGENT_POLL if secret is not None else AGENT_POLL_NO_SECRET
    look_every = AGENT_LOOK if secret is not None else AGENT_POLL_NO_SECRET
    text, gone, seen = "", False, 0
    next_look, next_alive = now + look_every, now + AGENT_ALIVE
    while time.monotonic() < deadline:
        answers = secret is not None and _answers(board, secret, ident)
        now = time.monotonic()
        if answers or gone or now >= next_look:
            next_look = now + look_every
            size = conn.size(f"{part_dir}/{out}", stage="agent-start") or 0
            grew, seen = size != seen, size
            if grew or answers or gone:
                text = conn.read_text(f"{part_dir}/{out}", stage="agent-start") or ""
                for line in text.splitlines():
                    if line.startswith("{") and '"ready"' in line:
                        pid = json_object(line).get("pid")  # what a board prints is read defensively
                        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                            return pid
                        raise BoardError(board.name, "agent-start", f"agent of {partition} printed a ready line "
                                         f"without a process id: {line[:120]!r}")
            if gone:  # it had exited before this last read of its output: nothing more will come
                break
            if grew or answers or now >= next_alive:
                next_alive = now + AGENT_ALIVE
                gone = not alive(conn, launched)
                if gone:
                    continue  # read its output once more, at once
        time.sleep(poll)
    log_text = conn.read_text(log, stage="agent-start") or ""
    detail = " | ".join((text.strip() or log_text.strip() or "no output").splitlines()[-3:])
    if gone:
        raise BoardError(board.name, "agent-start", f"agent of {partition} exited at start: {detail}")
    raise BoardError(board.name, "agent-start", f"agent of {partition} did not become ready within "
                     f"{AGENT_START_TIMEOUT:.0f} s: {detail}")


def _answers(board: Board, secret: bytes, ident: Tuple[bytes, bytes]) -> bool:
    """Whether the agent `ident` names, knowing `secret`, answers a ping on the board's data port now (False
    while nobody listens there, or whoever listens does not prove the secret)."""
    try:
        ping(board.host, board.data_port, secret, ident=ident)
        return True
    except (OSError, ValueError):
        return False


def agent_stale_state(health: dict) -> Optional[str]:
    """What an agent that should be idle still holds from an earlier session (frames queued, parts waiting
    for their partners, a host attached), from its PONG; None when it is clean. A plain deploy restarts an
    agent with stale state, so that no frame of an earlier run can reach the next one."""
    held = []
    queues = health.get("queues") or []
    if any(int(q or 0) for q in queues):
        held.append(f"{sum(int(q or 0) for q in queues)} queued frame(s)")
    if health.get("waiting_for_parts"):
        held.append(f"{health['waiting_for_parts']} frame(s) waiting for parts")
    if health.get("stale"):  # the agent's own verdict, when it gives one
        held.append(str(health["stale"]) if not isinstance(health["stale"], bool) else "stale session state")
    return ", ".join(held) or None
