"""Deployment: bring every board of a rack to the state a plan needs (labgrid's "strategy" layer).

Per partition, on its board (one partition per board, as one bitstream per FPGA):

1. upload what the board must carry: the partition's artifact (a virtual board: the hls4ml emulation `.so`
   of `splitting.hls.project_dir`; a real PYNQ-Z2: bitstream + .hwh from `splitrack build`), the partition's
   contracts, the agent config, the deployment's secret (mode 0600), and the agent with the modules it
   imports (the one list is `harness.board.files`: `wire.py`, `agent_config.py`, `contract.py`, `emulation.py`);
2. verify every uploaded file's sha256 *on the board*; a file that arrives corrupted is uploaded once more,
   then the deployment stops with an error naming the board;
3. skip both the upload and the reprogramming when the board already carries the same files and its agent
   answers with the same plan and partition (pytest-embedded's "skip flashing when the image matches");
4. (re)start the agent (`python3 -m agent part/agent.json` in the workdir; pidfile, log and stdout file beside
   its config). On a real board the agent programs
   the logic with `pynq.Overlay` when it starts, so a skipped restart is a skipped reprogramming.

Board layout, under the board's `workdir` (default ~/splitrack):

    agent.py wire.py agent_config.py overlay.py fast_model.py fast_kernel.py contract.py emulation.py
           lease.json (who holds the board, harness.rack.lease)
    part/  artifact (lib .so [+ partition.fast.npz, libfastkernel.so: virtual boards] | .bit + .hwh),
           contracts.json, agent.json, agent.secret (0600),
           running.json (pid of the agent started with that agent.json), agent-<partition>.pid / .log / .out

`deploy()` returns a `Deployment`; its `wiring` (harness.rack.wiring) is what `harness.measure.stream` needs.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from splitting.errors import UserError
from splitting.plan import Plan

from harness.board import wire
from harness.rack import wiring as wiring_mod
from harness.rack.rackfile import Board, Rack
from harness.board.files import agent_files
from harness.rack.ssh import CONNECT_TIMEOUT, BoardError, Connection, local_sha256

CODE = agent_files()  # board file name -> local source: the agent and what it imports
PART = "part"
SECRET_FILE = "agent.secret"  # in part/, beside agent.json (whose secret_file names it)
AGENT_START_TIMEOUT = 30.0  # python + numpy import + loading the library (a real board: programming the PL)
AGENT_STOP_TIMEOUT = 5.0
PING_TIMEOUT = 3.0
AGENT_POLL = 0.05  # s between pings of a starting agent's port (refused at once while nobody listens)
AGENT_LOOK = 0.5  # s between looks (one SFTP stat) at a starting agent's output meanwhile
AGENT_ALIVE = 2.0  # s between looks at its process when its output says nothing (killed without a word?)
AGENT_POLL_NO_SECRET = 0.1  # s between looks at its output when its port cannot be pinged
MIN_FREE_MEMORY = 64 << 20  # below this an agent with its frame queues does not fit next to the OS
MIN_FREE_DISK = 32 << 20
MIN_PYTHON = (3, 8)
MAX_PARALLEL = 32  # boards handled at once (threads waiting on SSH round trips and agent starts)


class DeployError(UserError, RuntimeError):
    """Deployment failed on one or more boards; `failures` lists (board, stage, message), `done` what worked."""

    def __init__(self, failures: List[BoardError], done: List["Placed"]):
        self.failures = failures
        self.done = done
        lines = [str(f) for f in failures]
        ok = ", ".join(f"{p.partition} on {p.board}" for p in done)
        super().__init__("; ".join(lines) + (f" (deployed fine: {ok})" if ok else ""))


@dataclass
class Placed:
    """One partition on one board, as the deployment left it."""

    partition: str
    board: str
    host: str
    port: int
    flashed: bool  # artifact uploaded and logic (re)programmed in this deployment
    uploaded: List[str]  # board files written in this deployment
    restarted: bool  # agent (re)started
    pid: int
    seconds: float


@dataclass
class Deployment:
    """A plan deployed on boards. For a test: `outputs = dep.stream(x)` runs frames through the boards,
    `dep.expected(x)` gives the answers the boards must return, bit for bit (the plan's chained hls4ml
    emulation, run on this machine)."""

    plan_hash: str
    placed: Dict[str, Placed]  # partition -> where and how
    wiring: "wiring_mod.Wiring"
    boards: Dict[str, Board]  # partition -> board
    seconds: float = 0.0
    plan: Optional[Plan] = field(default=None, repr=False)

    @property
    def flashed(self) -> List[str]:
        """The partitions whose boards were (re)programmed by this deployment; the others already carried the
        same artifact."""
        return [p.partition for p in self.placed.values() if p.flashed]

    def stream(self, frames, in_flight: int = 8, timeout: float = 10.0):
        """Send `frames` (n, *plan input shape), e.g. (n, 64) for a 64-input Dense model, through the boards,
        at most `in_flight` unanswered; returns the outputs (n, values per frame), float, in input order, as
        the output contract decodes them. Raises harness.measure.stream.StreamError (naming the board and
        stage) when a frame is lost or a board fails, AgentUnreachable when an agent is gone."""
        import numpy as np

        from harness.measure.stream import Pipeline

        x = np.asarray(frames, dtype=np.float32)
        with Pipeline(self.wiring) as pipe:
            return pipe.stream(x, in_flight=in_flight, timeout=timeout).outputs().reshape(len(x), -1)

    def expected(self, frames):
        """What the boards must answer for `frames`: the plan's partitions run one after another on this
        machine as their hls4ml emulation (the same libraries the virtual boards run, the C simulation of
        the logic on real boards), (n, values per frame) like `stream`. Needs the deployed Plan."""
        import numpy as np

        from splitting.chain import emulation_runner, run_chain

        if self.plan is None:
            raise UserError("this Deployment was made without its Plan; deploy it with harness.rack.deploy.deploy")
        x = np.asarray(frames, dtype=np.float32)
        return run_chain(self.plan, x, emulation_runner(self.plan)).reshape(len(x), -1)


# --- what a partition's board must carry --------------------------------------------------------------
def artifact_files(plan: Plan, name: str, board: Board) -> Dict[str, Path]:
    """Board file name (inside part/) -> local file of the partition's logic, for this kind of board."""
    return _artifact(plan, name, board)[0]


def _artifact(plan: Plan, name: str, board: Board):
    """(artifact_files, the agent's backend config) of a partition on this kind of board, the hls4ml project
    looked up once (its cache key hashes the model and asks for the hls4ml version: milliseconds, once per
    partition, not once per use)."""
    if board.virtual:
        from splitting.hls import ARTIFACT, project_dir

        folder = project_dir(plan, name)
        files = {"partition.so": checked_library(folder, name)}
        meta = json.loads((folder / ARTIFACT).read_text())
        fast_files, backend = _fast(plan, name, wiring_mod.emulation_backend(plan, name, "partition.so",
                                                                             meta["project"]))
        files.update(fast_files)  # the fast model's file, when the partition has one
        return files, backend
    hls = plan.path(f"{name}/hls")
    bits = sorted(hls.rglob("*.bit")) if hls.exists() else []
    hwhs = sorted(hls.rglob("*.hwh")) if hls.exists() else []
    if not bits or not hwhs:
        raise UserError(
            f"partition {name}: no bitstream (.bit + .hwh) under {hls}; build it with `splitrack build "
            f"{plan.root}` on a machine with Vivado, or deploy to virtual boards"
        )
    return ({"partition.bit": bits[-1], "partition.hwh": hwhs[-1]},
            wiring_mod.overlay_backend(plan, name, "partition.bit", "partition.hwh"))


def checked_library(folder: Path, name: str) -> Path:
    """The emulation library of a cached hls4ml project, after checking it against the sha256 its manifest
    (artifact.json) recorded when it was built. Raises UserError (one line, naming the file and what to do)
    for a manifest or library that is missing or damaged. A manifest written before checksums were recorded
    gets the library's checksum now (first use), and is checked from then on."""
    from splitting.hls import ARTIFACT

    art = Path(folder) / ARTIFACT
    rebuild = f"remove {folder} (the cache entry) and run again to rebuild it"
    try:
        meta = json.loads(art.read_text())
        lib = Path(folder) / meta["library"]
    except FileNotFoundError:
        raise UserError(f"partition {name}: the hls4ml cache entry has no manifest {art}; {rebuild}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"partition {name}: the manifest {art} is damaged ({e}); {rebuild}") from None
    if not lib.is_file():
        raise UserError(f"partition {name}: the library {lib} is missing from the hls4ml cache; {rebuild}")
    have = local_sha256(lib)
    want = meta.get("library_sha256")
    if want is None:
        meta["library_sha256"] = have
        meta["library_sha256_recorded"] = "first deploy"
        tmp = art.with_name(art.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, art)
    elif have != want:
        raise UserError(f"partition {name}: the cached library {lib} is damaged (sha256 {have[:12]}, built as "
                        f"{str(want)[:12]}); {rebuild}")
    return lib


def _fast(plan: Plan, name: str, emu_cfg: Optional[dict] = None):
    """(files, backend) of fast_model.board_files for a virtual board: the fast model's file (none when the
    partition has a layer it does not compute) and the agent backend, kind "fast" (the agent checks it
    against the emulation library at start and falls back to it) or `emu_cfg` unchanged."""
    from harness.board.fast_model import board_files

    return board_files(plan, name, emu_cfg or {})


def _timing(plan: Plan, name: str, board: Board) -> Optional[dict]:
    if board.timing != "estimate":
        return None
    est = plan.partition(name).estimate or {}
    if "cycles" not in est:
        raise UserError(f"board {board.name} has timing = \"estimate\", but partition {name} has no cycle estimate; "
                        "make the plan with `splitrack plan`, or remove `timing` from the rack file")
    # the plan's hls4ml clock (PYNQ-Z2 default: 10 ns, 100 MHz)
    return {"cycles": float(est["cycles"]), "clock_mhz": 1000.0 / float(plan.hls_defaults.get("clock_period", 10))}


def place(plan: Plan, rack: Rack) -> Dict[str, Board]:
    """Partitions in plan order onto boards in rack order: one partition per board."""
    parts = plan.ordered_partitions()
    if rack.lab is not None:
        raise UserError(f"{rack.path} is a shared rack (labgrid coordinator {rack.lab.coordinator}): deploy alone "
                        "would leave agents on boards it does not hold; `splitrack run`, `bench`, `nightly` and "
                        "`pytest --boards` lease the boards for as long as they run")
    if len(parts) > len(rack.boards):
        raise UserError(f"plan has {len(parts)} partitions and the rack {len(rack.boards)} usable boards "
                        f"({', '.join(rack.names)}): add boards (`splitrack rack up --boards {len(parts)}`) "
                        "or split into fewer partitions")
    return {p.name: b for p, b in zip(parts, rack.boards)}


# --- talking to the agent ------------------------------------------------------------------------------
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
    return agent_identity(_json(text))


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


def _remote_pids(conn: Connection, part_dir: str) -> Dict[str, int]:
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


def _json(text: Optional[str]) -> dict:
    """A JSON object a board gave (a file, a line of output), {} for anything else: never an exception."""
    try:
        d = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    return d if isinstance(d, dict) else {}


def _alive(conn: Connection, pid: int) -> bool:
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
    its pid files as _remote_pids read them, when the caller (holding the board's lease) has just done so."""
    part_dir = conn.remote_path(f"{board.workdir}/{PART}")
    sudo = ["sudo", "-n"] if board.sudo else []
    n = 0
    for fname, pid in (_remote_pids(conn, part_dir) if pids is None else pids).items():
        if _alive(conn, pid):
            n += 1
            conn.run(sudo + ["kill", "-TERM", str(pid)], check=False, timeout=10, stage="agent-stop")
            deadline = time.monotonic() + AGENT_STOP_TIMEOUT
            pause = 0.05  # growing: every look is four SFTP requests, and a busy board's agent takes a while
            while _alive(conn, pid) and time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(0.25, pause * 1.5)
            if _alive(conn, pid):
                conn.run(sudo + ["kill", "-KILL", str(pid)], check=False, timeout=10, stage="agent-stop")
                time.sleep(0.1)
                if _alive(conn, pid):
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


def _free_data_port(conn: Connection, board: Board, root: str, progress: Callable[[str], None]) -> None:
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
    if not re.search(r"(^|\s|/)(-m agent|agent\.py)(\s|$)", cmd):
        raise BoardError(board.name, "agent-start", f"{where} is held by pid {pid} ({cmd[:80]!r} in {cwd}), not a "
                         "splitrack agent: stop it, or give the board another data_port in the rack file")
    folder = cwd.rsplit(f"/{PART}", 1)[0] if cwd.endswith(f"/{PART}") else cwd
    home = conn.home.rstrip("/")
    if folder != root and not folder.startswith(home + "/"):  # not this board user's: never ours to stop
        raise BoardError(board.name, "agent-start", f"{where} is held by an agent working in {folder} (pid {pid}), "
                         f"outside this board user's home {home}: stop it, or give the board another data_port")
    if folder != root:  # an agent of another workdir: in use if someone leases that workdir
        from .lease import LEASE_FILE, RackLease

        info = RackLease([board], "probe")._read(conn, f"{folder}/{LEASE_FILE}", folder, board.name)
        if info is not None and not info.expired:
            raise BoardError(board.name, "agent-start", f"{where} is held by the agent of workdir {folder} (pid {pid}), "
                             f"{info.describe()}: this rack file's workdir is {root}; use the same workdir, or another "
                             "data_port")
    sudo = ["sudo", "-n"] if board.sudo else []
    conn.run(sudo + ["kill", "-TERM", str(pid)], check=False, timeout=10, stage="agent-stop")
    deadline = time.monotonic() + AGENT_STOP_TIMEOUT
    while _alive(conn, pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(conn, pid):
        conn.run(sudo + ["kill", "-KILL", str(pid)], check=False, timeout=10, stage="agent-stop")
    progress(f"  {board.name}: stopped the agent of workdir {folder} (pid {pid}) that held port {board.data_port} "
             f"(this rack file's workdir is {root})")


def start_agent(conn: Connection, board: Board, partition: str, secret: Optional[bytes] = None,
                ident: Optional[Tuple[bytes, bytes]] = None) -> int:
    """Start the agent of part/agent.json in the background; wait for its ready line. Returns its pid.

    The agent runs as `python3 -m agent part/agent.json` in the workdir. The previous agent's log is moved
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
    # `python3 -m agent` in the workdir, not `python3 ../agent.py`: a script is compiled from source at every
    # start, a module's bytecode is cached in __pycache__ (the agent is the largest file it runs)
    argv = (["sudo", "-n"] if board.sudo else []) + ["setsid", board.python, "-m", "agent", f"{PART}/agent.json"]
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
                        pid = _json(line).get("pid")  # what a board prints is read defensively
                        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                            return pid
                        raise BoardError(board.name, "agent-start", f"agent of {partition} printed a ready line "
                                         f"without a process id: {line[:120]!r}")
            if gone:  # it had exited before this last read of its output: nothing more will come
                break
            if grew or answers or now >= next_alive:
                next_alive = now + AGENT_ALIVE
                gone = not _alive(conn, launched)
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


# --- one board -----------------------------------------------------------------------------------------
def _deploy_one(plan: Plan, name: str, board: Board, art: Dict[str, Path], config: dict, force: bool,
                progress: Callable[[str], None], connect_timeout: float, secret: bytes, plan_hash: str,
                sums: Dict[Path, str]) -> Placed:
    """Deploy partition `name` onto `board`: `art` its artifact_files, `sums` the sha256 of every local
    file to upload (the agent's code and `art`), `plan_hash` the plan's hash (each computed once per
    deployment, not once per board)."""
    from . import lease

    t0 = time.monotonic()
    lease.require(board)  # never change a board another user may hold
    p = plan.partition(name)
    contracts = {"partition": name, "stage": p.stage,
                 "inputs": [c.to_dict() for c in plan.inputs_of(name)],
                 "outputs": [c.to_dict() for c in plan.outputs_of(name)]}
    blobs = {  # generated files: content in memory
        f"{PART}/contracts.json": (json.dumps(contracts, indent=1, sort_keys=True) + "\n").encode(),
        f"{PART}/agent.json": (json.dumps(config, indent=1, sort_keys=True) + "\n").encode(),
    }
    files = {k: v for k, v in CODE.items()}
    files.update({f"{PART}/{k}": v for k, v in art.items()})
    import hashlib

    want = {rel: sums[src] for rel, src in files.items()}
    want.update({rel: hashlib.sha256(data).hexdigest() for rel, data in blobs.items()})
    art_rels = {f"{PART}/{k}" for k in art}

    with (lease.shared_connection(board) or Connection(board, timeout=connect_timeout)) as conn:
        root = conn.remote_path(board.workdir)
        conn.mkdirs(f"{root}/{PART}")
        if force:  # everything is uploaded again: what the board holds now does not matter (one command less)
            stale = list(want)
        else:
            have = conn.sha256([f"{root}/{rel}" for rel in want], stage="verify")
            stale = [rel for rel in want if have.get(f"{root}/{rel}") != want[rel]]
        running = None
        pids = _remote_pids(conn, f"{root}/{PART}")
        # the agent that runs must be the one started with exactly this config (running.json says which
        # pid that was): a deployment that died between upload and restart leaves new files, old agent
        started = {} if stale else _json(conn.read_text(f"{root}/{PART}/running.json", stage="verify"))
        write_secret(conn, root, secret)
        stale_state = None
        ident = agent_identity(config)
        if not stale and pids and started.get("config") == want[f"{PART}/agent.json"]:
            try:
                h = ping(board.host, board.data_port, secret, ident=ident)
                if (h.get("plan_hash"), h.get("partition"), h.get("pid")) == (plan_hash, name, started.get("pid")):
                    running = int(h["pid"])
                    stale_state = agent_stale_state(h)
            except (OSError, ValueError):
                running = None
        if not stale and running and not stale_state:
            progress(f"  {name} on {board.name}: board carries the same artifact and agent (pid {running}); "
                     "not uploaded, not reprogrammed")
            return Placed(name, board.name, board.host, board.data_port, False, [], False, running,
                          time.monotonic() - t0)
        # new files go to a staging name and are checked there while the old agent still runs: a failed
        # upload leaves the board as it was; only then is the old agent stopped and the files swapped in
        if stale:
            _upload(conn, board, root, stale, files, blobs, want)
        stop_agents(conn, board, pids)
        _free_data_port(conn, board, root, progress)
        for rel in stale:
            conn.rename(f"{root}/{rel}.upload", f"{root}/{rel}", stage="swap")
        # running.json names the agent that matches the files; until a new one is up, none does
        conn.remove(f"{root}/{PART}/running.json", stage="agent-start")
        flashed = bool(art_rels & set(stale)) or force
        pid = start_agent(conn, board, name, secret, ident)
        conn.put_bytes(json.dumps({"pid": pid, "config": want[f"{PART}/agent.json"]}).encode(),
                       f"{root}/{PART}/running.json", stage="agent-start")
        if stale_state and not stale:
            progress(f"  {name} on {board.name}: same artifact, but its agent held {stale_state}: restarted")
    try:
        h = ping(board.host, board.data_port, secret, ident=ident)
    except (OSError, ValueError) as e:
        raise BoardError(board.name, "agent-ping", f"agent of {name} started (pid {pid}) but does not answer on "
                         f"{board.host}:{board.data_port} ({e}); is that port reachable from this machine?") from None
    if (h.get("partition"), h.get("plan_hash"), h.get("pid")) != (name, plan_hash, pid):
        raise BoardError(board.name, "agent-ping", f"{board.host}:{board.data_port} answers as partition "
                         f"{h.get('partition')!r} of plan {h.get('plan_hash')!r} (pid {h.get('pid')}), not {name!r} "
                         f"of plan {plan_hash!r} (pid {pid}): another agent holds the port")
    what = "uploaded " + ", ".join(sorted(Path(r).name for r in stale)) if stale else "files unchanged"
    progress(f"  {name} on {board.name}: {what}; agent pid {pid} on port {board.data_port}")
    return Placed(name, board.name, board.host, board.data_port, flashed, sorted(stale), True, pid,
                  time.monotonic() - t0)


def _upload(conn: Connection, board: Board, root: str, rels: List[str], files: Dict[str, Path],
            blobs: Dict[str, bytes], want: Dict[str, str]) -> None:
    """Upload to the staging name `<file>.upload` and verify sha256 on the board; the caller renames them
    into place. One retry for files that arrive corrupted; then the staging files are removed."""
    todo = list(rels)
    for attempt in (1, 2):
        for rel in todo:
            tmp = f"{root}/{rel}.upload"
            if rel in blobs:
                conn.put_bytes(blobs[rel], tmp, stage="upload")
            else:
                conn.put(files[rel], tmp, stage="upload")
        got = conn.sha256([f"{root}/{rel}.upload" for rel in todo], stage="verify")
        bad = [rel for rel in todo if got.get(f"{root}/{rel}.upload") != want[rel]]
        if not bad:
            return
        todo = bad
    details = ", ".join(f"{rel} (expected {want[rel][:12]}, board has {str(got.get(f'{root}/{rel}.upload'))[:12]})"
                        for rel in bad[:2]) + (f" and {len(bad) - 2} more" if len(bad) > 2 else "")
    for rel in rels:
        conn.remove(f"{root}/{rel}.upload", stage="verify")
    raise BoardError(board.name, "verify", f"sha256 mismatch after upload, twice: {details}; "
                     "the board's storage or link corrupts data: check its SD card (its agent was left running)")


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


# --- the rack ------------------------------------------------------------------------------------------
def deploy(plan: Plan, rack: Rack, force: bool = False, progress: Callable[[str], None] = lambda s: None,
           faults: Optional[Dict[str, dict]] = None, part_timeout: Optional[float] = None,
           connect_timeout: float = CONNECT_TIMEOUT, lease_wait: float = 0.0) -> Deployment:
    """Deploy `plan` onto `rack` (partitions onto boards in order), in parallel over boards.

    The boards are leased for the deployment (harness.rack.lease), unless this process holds them already (a
    run or bench holds them for the whole job): a board another user holds raises LeaseHeld (after
    waiting up to `lease_wait` seconds), before anything on any board is changed.
    faults: partition -> agent fault-injection entry (tests only, see the agent's docstring).
    """
    from . import lease

    boards = place(plan, rack)
    # compile (or find and check cached) artifacts before taking the boards, in this thread: hls4ml must not
    # compile in parallel threads
    prepared = {name: _artifact(plan, name, b) for name, b in boards.items()}
    with lease.ensure(list(boards.values()), "deploy", wait=lease_wait, progress=progress,
                      connect_timeout=connect_timeout) as held:
        dep = _deploy(plan, boards, prepared, force, progress, faults, part_timeout, connect_timeout)
        if held is not None:
            held.check()
        return dep


def _deploy(plan: Plan, boards: Dict[str, Board], prepared: Dict[str, tuple], force: bool,
            progress: Callable[[str], None], faults: Optional[Dict[str, dict]], part_timeout: Optional[float],
            connect_timeout: float) -> Deployment:
    """prepared: partition -> _artifact(plan, partition, its board)."""
    t0 = time.monotonic()
    plan_hash = plan.hash  # hashes the whole plan: once, not per partition (64 boards: 64 x a 64-partition plan)
    progress(f"deploying plan {plan_hash} ({len(boards)} partitions) to {', '.join(b.name for b in boards.values())}")
    endpoints = {n: wiring_mod.Endpoint(b.name, b.host, b.data_port) for n, b in boards.items()}
    secret = wire.new_secret()  # one per deployment: every connection to its agents must prove it
    configs = {}
    for name, b in boards.items():
        cfg = wiring_mod.agent_config(plan, name, endpoints, prepared[name][1], timing=_timing(plan, name, b),
                                      faults=(faults or {}).get(name), plan_hash=plan_hash)
        if part_timeout is not None:
            cfg["part_timeout"] = part_timeout
        configs[name] = cfg
    wiring = wiring_mod.wire(plan, endpoints, configs, secret=secret, plan_hash=plan_hash)
    # every local file a board gets, hashed once (the agent's code is the same for every board)
    local = set(CODE.values()) | {f for files, _ in prepared.values() for f in files.values()}
    sums = {f: local_sha256(f) for f in local}
    placed: Dict[str, Placed] = {}
    failures: List[BoardError] = []
    # most of a board's deployment is waiting for it (SFTP round trips, the agent's start): many at once
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(boards))) as pool:
        futs = {name: pool.submit(_deploy_one, plan, name, b, prepared[name][0], configs[name], force, progress,
                                  connect_timeout, secret, plan_hash, sums)
                for name, b in boards.items()}
        for name, fut in futs.items():
            try:
                placed[name] = fut.result()
            except BoardError as e:
                failures.append(e)
            except UserError as e:
                failures.append(BoardError(boards[name].name, "prepare", str(e)))
    if failures:
        raise DeployError(failures, list(placed.values()))
    dep = Deployment(plan_hash, placed, wiring, boards, time.monotonic() - t0, plan=plan)
    if plan.root is not None:
        wiring.save(plan.root / wiring_mod.WIRING_FILE)
    return dep


def undeploy(rack: Rack, boards: Optional[List[str]] = None) -> int:
    """Stop the agents on the rack's boards (files stay, so the next deploy skips the upload)."""
    def stop(b: Board) -> int:
        lease.require(b)
        with (lease.shared_connection(b) or Connection(b)) as conn:
            return stop_agents(conn, b)

    from . import lease

    chosen = [b for b in rack.boards if boards is None or b.name in boards]
    if not chosen:
        return 0
    with lease.ensure(chosen, "undeploy"), ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(chosen))) as pool:
        return sum(pool.map(stop, chosen))


# --- health ----------------------------------------------------------------------------------------------
@dataclass
class Health:
    """The health check of one board: ok, the reason it is quarantined when not, and details (e.g. free
    memory and disk)."""

    board: str
    ok: bool
    reason: str = ""
    details: Dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        """One line for reports: 'board: ok (details)' or 'board: QUARANTINED: reason (details)'."""
        d = ", ".join(f"{k} {v}" for k, v in self.details.items())
        return f"{self.board}: {'ok' if self.ok else 'QUARANTINED: ' + self.reason}" + (f" ({d})" if d else "")


def board_secret(conn: Connection, board: Board) -> bytes:
    """The secret of the deployment a board carries (part/agent.secret, read over SSH); b"" when none."""
    text = conn.read_text(conn.remote_path(f"{board.workdir}/{PART}/{SECRET_FILE}"), stage="health")
    return bytes.fromhex((text or "").strip())


def ping_board(board: Board, timeout: float = 5.0) -> dict:
    """The PONG of the agent on `board`, whoever deployed it: its secret and identity are read over SSH first
    (the owner of the board's SSH key may ask its agent anything). Raises BoardError, OSError, ValueError."""
    with Connection(board, timeout=timeout) as conn:
        secret = board_secret(conn, board)
        ident = board_identity(conn, board)
    return ping(board.host, board.data_port, secret, ident=ident)


def check_board(board: Board, timeout: float = 5.0) -> Health:
    """SSH reachable, the agent's runtime (python >= 3.8 with numpy) answers, enough free memory and disk,
    and a running agent answers a ping. Never raises: a bad board gets a reason."""
    d: Dict[str, object] = {}
    try:
        with Connection(board, timeout=timeout) as conn:
            r = conn.run([board.python, "-c", "import sys, numpy; print(sys.version_info[0], sys.version_info[1], "
                          "numpy.__version__)"], check=False, timeout=20, stage="health")
            if r.status != 0:
                return Health(board.name, False, f"`{board.python}` with numpy does not run: "
                              f"{(r.stderr or r.stdout).strip()[-200:]}", d)
            # what the board prints is read defensively: garbage is a reason, never a traceback
            version = _numbers(r.stdout, 2)
            if version is None:
                return Health(board.name, False, f"`{board.python}` printed {_shown(r.stdout)} where its version "
                              "was expected: is `python` in the rack file the board's Python 3?", d)
            major, minor = version
            d["python"] = f"{major}.{minor}"
            if (major, minor) < MIN_PYTHON:
                return Health(board.name, False, f"python {major}.{minor} is older than 3.8", d)
            free = conn.run(["free", "-b"], check=False, timeout=10, stage="health").stdout
            mem = [ln.split() for ln in free.splitlines() if ln.startswith("Mem:")]
            avail = _numbers(" ".join(mem[0][6:7] if len(mem[0]) > 6 else mem[0][3:4]), 1) if mem else None
            if avail is None:
                return Health(board.name, False, f"`free -b` printed {_shown(free)}, not the memory table of "
                              "procps' free: check the board's tools", d)
            d["free_memory_mib"] = avail[0] >> 20
            if avail[0] < MIN_FREE_MEMORY:
                return Health(board.name, False, f"only {avail[0] >> 20} MiB of memory available "
                              f"(an agent needs {MIN_FREE_MEMORY >> 20} MiB): reboot the board", d)
            df_out = conn.run(["df", "-Pk", conn.home], check=False, timeout=10, stage="health").stdout
            df = df_out.splitlines()
            avail_k = _numbers(" ".join(df[1].split()[3:4]), 1) if len(df) >= 2 else None
            if avail_k is None:
                return Health(board.name, False, f"`df -Pk` printed {_shown(df_out)}, not a POSIX df table: "
                              "check the board's tools", d)
            d["free_disk_mib"] = avail_k[0] >> 10
            if avail_k[0] << 10 < MIN_FREE_DISK:
                return Health(board.name, False, f"only {avail_k[0] >> 10} MiB of disk free "
                              f"(need {MIN_FREE_DISK >> 20} MiB): clean up the board's SD card", d)
            pids = _remote_pids(conn, conn.remote_path(f"{board.workdir}/{PART}"))
            live = [p for p in pids.values() if _alive(conn, p)]
            secret = board_secret(conn, board) if live else b""
            try:
                ident = board_identity(conn, board) if live else None
            except ValueError as e:
                ident, d["agent"] = None, f"pid {live[0]} runs, but {e}; deploy restarts it"
    except BoardError as e:
        return Health(board.name, False, f"{e.stage}: {str(e).split(': ', 1)[-1]}", d)
    except ValueError as e:  # the board's secret file is not hex
        return Health(board.name, False, f"the board's agent secret cannot be read ({e}): deploy again", d)
    if live and ident is not None:
        try:
            h = ping(board.host, board.data_port, secret, ident=ident)
            d["agent"] = f"{h.get('partition')} pid {h.get('pid')}"
        except (OSError, ValueError) as e:
            d["agent"] = f"pid {live[0]} does not answer ({e}); deploy restarts it"
    return Health(board.name, True, "", d)


def _numbers(text: str, n: int) -> Optional[Tuple[int, ...]]:
    """The first `n` whitespace-separated words of `text` as non-negative integers, None when they are not."""
    words = text.split()[:n]
    if len(words) < n or not all(w.isdigit() and len(w) < 30 for w in words):
        return None
    return tuple(int(w) for w in words)


def _shown(text: str) -> str:
    """A board's output as a message shows it: one line, at most 80 characters, repr'd."""
    one = " ".join(text.split())
    return repr(one[:77] + "..." if len(one) > 80 else one) if one else "nothing"


def power_cycle(board: Board, wait: float = 180.0, timeout: float = 5.0) -> Health:
    """Run the board's power_cycle command (locally, as an argument list), then wait up to `wait` seconds
    for the board to pass the health check again. Returns the last health answer."""
    import subprocess

    if not board.power_cycle:
        raise UserError(f"board {board.name} has no power_cycle command in the rack file")
    try:
        r = subprocess.run(board.power_cycle, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Health(board.name, False, f"power-cycle: {board.power_cycle[0]} failed: {e}")
    if r.returncode != 0:
        return Health(board.name, False, f"power-cycle: `{' '.join(board.power_cycle)}` exited with "
                      f"{r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}")
    deadline = time.monotonic() + wait
    while True:
        h = check_board(board, timeout)
        if h.ok or time.monotonic() > deadline:
            h.details["power_cycled"] = True
            if not h.ok:
                h.reason = f"still bad {wait:.0f} s after a power cycle: {h.reason}"
            return h
        time.sleep(2.0)


def check_rack(rack: Rack, timeout: float = 5.0, recover: bool = False, wait: float = 180.0) -> List[Health]:
    """Health of every board, in parallel. recover: power-cycle the bad boards that have a power_cycle
    command, and check them again."""
    def one(b: Board) -> Health:
        h = check_board(b, timeout)
        if not h.ok and recover and b.power_cycle:
            h = power_cycle(b, wait, timeout)
        return h

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(rack.boards))) as pool:
        return list(pool.map(one, rack.boards))
