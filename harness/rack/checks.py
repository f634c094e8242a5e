"""Checks of one board: can it run the agent, and will a plan's files fit? One implementation for
`splitrack doctor` (harness.jobs.doctor, which adds the clock), `rack check` and the pytest plugin's health check
(harness.rack.health.check_board), and the cheap checks every deploy runs before it uploads anything.

A check reads the board over SSH (harness.rack.ssh) and records what it found (`facts`) and, for each thing
that is wrong, one `Problem`: one line that names the board, says what is wrong and what to do. Checks are
registered by name in CHECKS, in the order they run:

- runtime: one run of the rack file's `python` (under `sudo -n setsid -w` when the rack asks for sudo, as the
  agent is started): Python >= 3.8, numpy, pynq (on a real board, or when the rack states `pynq_version`,
  whose version must match), and what the board is: its machine and the PYNQ image's board name
  (/proc/device-tree/chosen/pynq_board, or $BOARD) against the rack file's `kind` (KINDS);
- memory: `free -b`; disk: `df -Pk` of the workdir (or the folder it will be made in) against the bytes a
  deploy uploads plus headroom (both run by the runtime check's probe: one command per board);
- data-port: a TCP connect from this machine: refused (free), or an agent this rack file's key deployed
  (`port_owner`), or another program (a problem).

A caller adds checks of its own with `extra` (name -> function of a Context). A deploy runs them all but finds
numpy and pynq without importing them (imports=False: one Python start-up, no module loaded).
"""
from __future__ import annotations

import json
import platform
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from harness.rack.rackfile import Board
from harness.rack.ssh import CONNECT_TIMEOUT, BoardError, Connection

MIN_PYTHON = (3, 8)  # the agent's language level (PYNQ 2.7 and later images ship Python 3.8 to 3.10)
MIN_FREE_MEMORY = 64 << 20  # below this an agent with its frame queues does not fit next to the OS
MIN_FREE_DISK = 32 << 20  # headroom beyond the files a deploy uploads: logs, pid files, bytecode
PORT_TIMEOUT = 3.0
MAX_PARALLEL = 32
PYNQ_PYTHON = "/usr/local/share/pynq-venv/bin/python3"  # PYNQ 3's venv, where pynq and numpy live


@dataclass(frozen=True)
class KindSpec:
    """What a board of one rack-file `kind` must be: the machines it runs on (empty: this host's, as the
    emulation library is built here), the board name a PYNQ image gives it, and whether the agent needs pynq."""

    machines: Tuple[str, ...]
    board_name: Optional[str]
    needs_pynq: bool


KINDS: Dict[str, KindSpec] = {
    "pynq-z2": KindSpec(("armv7l",), "Pynq-Z2", True),
    "virtual-pynq-z2": KindSpec((), None, False),
}


@dataclass
class Problem:
    """One thing wrong with a board (or the host, or the plan): `check` names the check, `message` says what
    is wrong and what to do."""

    board: str
    check: str
    message: str

    def line(self) -> str:
        """'board: check: message', one line."""
        return f"{self.board}: {self.check}: {self.message}"


@dataclass
class Need:
    """What a deployment asks of one board: the partition it gets and the bytes of the files it uploads
    (`complete` False when some file's size is not known yet: a library hls4ml has not compiled)."""

    partition: Optional[str] = None
    upload_bytes: int = 0
    complete: bool = True


@dataclass
class BoardReport:
    """The checks' answer for one board: facts (name -> value, for the table and JSON) and problems."""

    board: str
    kind: str
    facts: Dict[str, Any] = field(default_factory=dict)
    problems: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check found a problem."""
        return not self.problems

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: board, kind, ok, facts and problems (each with its one line)."""
        return {"board": self.board, "kind": self.kind, "ok": self.ok, "facts": dict(self.facts),
                "problems": [dict(asdict(p), line=p.line()) for p in self.problems]}


PortOwner = Callable[[Connection, Board], Optional[str]]


@dataclass
class Context:
    """What a check works with: the board, its open SSH connection, what a deploy needs of it, whether to
    import modules, who owns the data port, and the report it writes to (facts; `fail` adds a Problem)."""

    board: Board
    conn: Connection
    need: Need
    imports: bool
    port_owner: Optional[PortOwner]
    report: BoardReport
    probe: Dict[str, Any] = field(default_factory=dict)  # what the runtime check's probe answered

    def fail(self, check: str, message: str) -> None:
        """Add a Problem of this board: `check` names the check, `message` what is wrong and what to do."""
        self.report.problems.append(Problem(self.board.name, check, message))

    @property
    def facts(self) -> Dict[str, Any]:
        """The report's facts (name -> value)."""
        return self.report.facts


# --- runtime: python, numpy, pynq, what the board is ---------------------------------------------------
# Runs on the board's python, whatever its version: no f-strings, prints one JSON line. argv[1]: "import"
# (import numpy and pynq, their versions) or "find" (find them without importing: fast); argv[2]: "pynq" to
# look for pynq, else "-"; argv[3]: the workdir. It also runs `free -b` and `df -Pk` (of the workdir, or the
# folder it will be made in): one command per board, not three (each costs a virtual board a process).
PROBE = r"""
import json, os, platform, subprocess, sys
out = {"python": list(sys.version_info[:3]), "executable": sys.executable, "machine": platform.machine()}
def module(name):
    try:
        if sys.argv[1] == "import":
            m = __import__(name)
            v = getattr(m, "__version__", None)
            if v is None:
                from importlib.metadata import version
                v = version(name)
            return {"version": str(v)}
        import importlib.util
        return {"found": importlib.util.find_spec(name) is not None}
    except Exception as e:
        return {"error": "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")}
out["numpy"] = module("numpy")
if sys.argv[2] == "pynq":
    out["pynq"] = module("pynq")
def command(argv):
    try:
        return subprocess.check_output(argv, stderr=subprocess.STDOUT, universal_newlines=True)
    except Exception:
        return None
out["free"] = command(["free", "-b"])
folder = sys.argv[3]
while folder not in ("", "/") and not os.path.isdir(folder):
    folder = os.path.dirname(folder)
folder = folder or "/"
out["df"] = [folder, command(["df", "-Pk", folder])]
def first_line(path):
    try:
        with open(path) as f:
            return f.read().replace("\0", "\n").strip().splitlines()[0].strip()
    except Exception:
        return None
board = first_line("/proc/device-tree/chosen/pynq_board") or os.environ.get("BOARD")
if not board:
    try:
        for line in open("/etc/environment"):
            if line.strip().startswith("BOARD="):
                board = line.split("=", 1)[1].strip().strip('"')
    except Exception:
        pass
out["board"] = board
out["image"] = first_line("/boot/REVISION") or first_line(os.path.expanduser("~/REVISION"))
out["virtual"] = os.environ.get("SPLITRACK_BOARD")
print(json.dumps(out))
"""


def _text(v: Any, limit: int = 80) -> Optional[str]:
    """A board's word as one printable line of at most `limit` characters (None stays None)."""
    lines = str(v).strip().splitlines() if v is not None else []
    return "".join(c if c.isprintable() else "?" for c in lines[0])[:limit] if lines else None


def parse_probe(stdout: str) -> Dict[str, Any]:
    """The probe's answer (its last line of output), checked field by field: it comes from the board, so
    nothing in it is trusted to have the right type or a printable value. Raises ValueError when it is not
    the probe's answer."""
    d = json.loads(stdout.strip().splitlines()[-1])
    if not isinstance(d, dict) or not isinstance(d.get("python"), list) or len(d["python"]) < 2:
        raise ValueError("not the probe's answer")
    out: Dict[str, Any] = {"python": tuple(int(v) for v in d["python"][:3])}
    for name in ("numpy", "pynq"):
        if name in d:
            m = d[name] if isinstance(d[name], dict) else {}
            out[name] = {k: (_text(m[k], 200) if k != "found" else bool(m[k])) for k in ("version", "found", "error")
                         if k in m}
    for name in ("machine", "board", "image", "virtual"):
        out[name] = _text(d.get(name))
    out["free"] = d["free"] if isinstance(d.get("free"), str) else None
    df = d.get("df")
    out["df"] = (str(df[0]), df[1]) if isinstance(df, list) and len(df) == 2 and isinstance(df[1], str) else None
    return out


def _sudo_refused(res) -> Optional[str]:
    """sudo's own refusal (its message), or None when the command ran (whatever it then said)."""
    text = (res.stderr or "").strip()
    lines = text.splitlines()
    if res.status == 127 and "sudo" in text:
        return "sudo is not installed"
    if res.status != 0 and lines and lines[-1].startswith("sudo:"):
        return lines[-1]
    return None


def _run_probe(ctx: Context, sudo: bool):
    b = ctx.board
    argv = [b.python, "-c", PROBE, "import" if ctx.imports else "find", "pynq" if _pynq_expected(b) else "-",
            ctx.conn.remote_path(b.workdir)]
    if sudo:
        argv = ["sudo", "-n", "setsid", "-w"] + argv  # as the agent is started (deploy.start_agent)
    return ctx.conn.run(argv, check=False, timeout=60, stage="runtime")


def _pynq_expected(b: Board) -> bool:
    return KINDS[b.kind].needs_pynq or b.pynq_version is not None


def check_runtime(ctx: Context) -> None:
    """The rack file's `python` (as the agent runs it): version, numpy, pynq, machine and board name."""
    b = ctx.board
    how = f"`{b.python}`" + (" under sudo" if b.sudo else "")
    res = _run_probe(ctx, b.sudo)
    if b.sudo:
        refused = _sudo_refused(res)
        ctx.facts["sudo"] = "refused" if refused else "ok"
        if refused:
            ctx.fail("sudo", f"`sudo -n` refused ({refused}); the rack file asks for sudo = true (PYNQ's Overlay "
                     f"needs root): on the board, let {b.user} start the agent without a password "
                     f"(echo '{b.user} ALL=(root) NOPASSWD: /usr/bin/setsid, /usr/bin/kill' | sudo tee "
                     "/etc/sudoers.d/splitrack), or set sudo = false")
            how = f"`{b.python}` (without sudo: it was refused)"
            res = _run_probe(ctx, False)
    else:
        ctx.facts["sudo"] = "-"
    out = (res.stderr or res.stdout).strip()
    last = out.splitlines()[-1] if out else ""
    if res.status == 127 or (res.status != 0 and b.python in last and ("not found" in last or "No such file" in last)):
        ctx.facts["python"] = "missing"
        ctx.fail("python", f"{how} is not on the board ({last or 'not found'}): install "
                 f"Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ with numpy, or set python = to its path in the rack file "
                 f"(PYNQ 3: \"{PYNQ_PYTHON}\")")
        return
    try:
        info = parse_probe(res.stdout) if res.status == 0 else None
    except (ValueError, TypeError, IndexError):
        info = None
    if info is None:
        ctx.facts["python"] = "fails"
        detail = " | ".join(out.splitlines()[-2:]) or "no output"
        ctx.fail("python", f"{how} does not run a short script ({detail}): check that it is a working Python "
                 f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}+, or set python = in the rack file")
        return
    version = info["python"]
    ctx.probe = info
    ctx.facts["python"] = ".".join(str(v) for v in version)
    if version[:2] < MIN_PYTHON:
        ctx.fail("python", f"{how} is Python {ctx.facts['python']}, older than {MIN_PYTHON[0]}.{MIN_PYTHON[1]} "
                 f"(the agent's minimum; PYNQ 2.7 and later ship 3.8 to 3.10): flash a newer PYNQ image, or set "
                 f"python = to a {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ interpreter with numpy")
    _module_fact(ctx, "numpy", info.get("numpy", {}), how,
                 f"install it for that interpreter ({b.python} -m pip install numpy), or set python = to one "
                 f"that has it (PYNQ 3: \"{PYNQ_PYTHON}\")")
    if "pynq" in info:
        _check_pynq(ctx, info["pynq"], how)
    else:
        ctx.facts["pynq"] = "-"
    _check_kind(ctx, info)


def _module_fact(ctx: Context, name: str, m: dict, how: str, fix: str) -> bool:
    """Record a module's fact ('1.26.4', 'found', 'missing', 'broken'); a problem when it cannot be had."""
    if m.get("version"):
        ctx.facts[name] = m["version"]
        return True
    if m.get("found"):
        ctx.facts[name] = "found"
        return True
    if m.get("error") and not m["error"].startswith(("ModuleNotFoundError", "ImportError: No module")):
        ctx.facts[name] = "broken"
        ctx.fail(name, f"{how} cannot import {name} ({m['error']}): reinstall it, {fix}")
        return False
    ctx.facts[name] = "missing"
    ctx.fail(name, f"{how} has no {name}: {fix}")
    return False


def _check_pynq(ctx: Context, m: dict, how: str) -> None:
    b = ctx.board
    ok = _module_fact(ctx, "pynq", m, how, f"use the PYNQ image's own Python (python = \"{PYNQ_PYTHON}\" on "
                      "PYNQ 3), or install pynq into it")
    if not ok or b.pynq_version is None or not m.get("version"):
        return  # the version is only known when pynq was imported (doctor), and only checked when stated
    from packaging.version import InvalidVersion, Version

    try:
        same = Version(m["version"]) == Version(b.pynq_version)
    except InvalidVersion:
        same = m["version"] == b.pynq_version
    if not same:
        ctx.fail("pynq", f"the board has pynq {m['version']}, the rack file says pynq_version = "
                 f"\"{b.pynq_version}\": flash the PYNQ {b.pynq_version} image on it, or set pynq_version = "
                 f"\"{m['version']}\" for this board")


def _check_kind(ctx: Context, info: dict) -> None:
    """The board is what the rack file's `kind` says (KINDS): its machine, and the PYNQ image's board name."""
    b = ctx.board
    spec = KINDS[b.kind]
    machine = info.get("machine") or "?"
    name = info.get("board")
    ctx.facts["image"] = (f"virtual ({info['virtual']})" if info.get("virtual") else
                          info.get("image") or name or machine)
    want = spec.machines or (platform.machine(),)
    if machine not in want:
        if spec.machines:
            ctx.fail("kind", f"the board is a {machine} machine, not a {b.kind} ({' or '.join(want)}): set kind = "
                     "\"virtual-pynq-z2\" for a board that runs the hls4ml emulation, or fix host")
        else:
            ctx.fail("kind", f"a {b.kind} board runs the emulation library built on this {want[0]} machine, but "
                     f"the board is a {machine}: set kind = \"pynq-z2\" for a real PYNQ-Z2")
        return
    if spec.board_name and name != spec.board_name:
        if not name:
            ctx.fail("kind", f"cannot tell which board this is (no /proc/device-tree/chosen/pynq_board, no BOARD): "
                     f"flash the official {spec.board_name} PYNQ image (pynq.io), or fix kind")
        else:
            ctx.fail("kind", f"the PYNQ image says this board is a {name}, not a {spec.board_name}: flash the "
                     f"{spec.board_name} image, or fix kind")


# --- memory, disk -----------------------------------------------------------------------------------------
def check_memory(ctx: Context) -> None:
    """Available memory (`free -b`) against MIN_FREE_MEMORY."""
    free = ctx.probe.get("free") or ctx.conn.run(["free", "-b"], check=False, timeout=10, stage="memory").stdout
    mem = [ln.split() for ln in free.splitlines() if ln.startswith("Mem:")]
    if not mem:
        ctx.facts["free_memory_mib"] = None
        ctx.fail("memory", "`free -b` gave no Mem: line: install procps on the board")
        return
    try:
        avail = int(mem[0][6] if len(mem[0]) > 6 else mem[0][3])
    except (IndexError, ValueError):
        ctx.facts["free_memory_mib"] = None
        ctx.fail("memory", f"`free -b` answered a Mem: line this check cannot read ({_text(' '.join(mem[0]))}): "
                 "install procps on the board")
        return
    ctx.facts["free_memory_mib"] = avail >> 20
    if avail < MIN_FREE_MEMORY:
        ctx.fail("memory", f"only {avail >> 20} MiB of memory available (an agent needs {MIN_FREE_MEMORY >> 20} "
                 "MiB): stop what else runs there (Jupyter?) or reboot the board")


def _existing_folder(conn: Connection, path: str) -> str:
    """`path`, or its deepest folder that exists (the workdir before a first deploy: the home)."""
    while path not in ("", "/") and not conn.exists(path, stage="disk"):
        path = path.rsplit("/", 1)[0] or "/"
    return path or "/"


def check_disk(ctx: Context) -> None:
    """Free space (`df -Pk`) where the workdir is, against the files a deploy uploads plus MIN_FREE_DISK."""
    conn, need = ctx.conn, ctx.need
    folder, df = ctx.probe.get("df") or (None, None)
    if not df:  # the probe did not run (no working python) or its df failed: ask once more, by itself
        folder = _existing_folder(conn, conn.remote_path(ctx.board.workdir))
        df = conn.run(["df", "-Pk", folder], check=False, timeout=10, stage="disk").stdout
    df = df.splitlines()
    try:
        avail = int(df[-1].split()[3]) << 10
    except (IndexError, ValueError):
        ctx.facts["free_disk_mib"] = None
        ctx.fail("disk", f"`df -Pk {folder}` gave no answer to read: check the board's filesystem")
        return
    ctx.facts["free_disk_mib"] = avail >> 20
    want = need.upload_bytes + MIN_FREE_DISK
    if need.upload_bytes:
        ctx.facts["need_disk_mib"] = ("" if need.complete else ">=") + f"{-(-want // (1 << 20))}"
    if avail < want:
        files = (f"{need.upload_bytes / (1 << 20):.1f} MiB of files for {need.partition}"
                 + ("" if need.complete else " (more once hls4ml has compiled it)") + " and "
                 if need.upload_bytes else "")
        ctx.fail("disk", f"only {avail >> 20} MiB of disk free in {folder} (needs {files}{MIN_FREE_DISK >> 20} MiB "
                 "headroom): free space on the board's SD card, or set workdir to a folder on a larger disk")


# --- the data port ----------------------------------------------------------------------------------------
def check_data_port(ctx: Context) -> None:
    """From this machine, the board's data port: free (refused), ours (`port_owner` says whose), or held by
    another program, or unreachable."""
    b = ctx.board
    try:
        with socket.create_connection((b.host, b.data_port), timeout=PORT_TIMEOUT):
            pass
    except ConnectionRefusedError:
        ctx.facts["data_port"] = f"{b.data_port} free"
        return
    except (socket.timeout, TimeoutError):
        ctx.facts["data_port"] = f"{b.data_port} no answer"
        ctx.fail("data-port", f"{b.host}:{b.data_port} does not answer from this machine within {PORT_TIMEOUT:.0f} s "
                 "(a firewall drops it?): open that TCP port on the board, or set data_port to one that is open")
        return
    except OSError as e:
        ctx.facts["data_port"] = f"{b.data_port} unreachable"
        ctx.fail("data-port", f"{b.host}:{b.data_port} cannot be reached from this machine ({e.strerror or e}): "
                 "check the network between them")
        return
    owner = ctx.port_owner(ctx.conn, b) if ctx.port_owner else None
    if owner:
        ctx.facts["data_port"] = f"{b.data_port} {owner}"
        return
    ctx.facts["data_port"] = f"{b.data_port} taken"
    ctx.fail("data-port", f"port {b.data_port} is held by another program (not an agent of this rack's workdir): "
             "stop it, or set data_port to a free port")


CHECKS: Dict[str, Callable[[Context], None]] = {
    "runtime": check_runtime,
    "memory": check_memory,
    "disk": check_disk,
    "data-port": check_data_port,
}


# --- running them ---------------------------------------------------------------------------------------
def upload_bytes(files: Iterable[Path]) -> int:
    """Bytes of the local files a deploy uploads to a board."""
    return sum(Path(f).stat().st_size for f in files)


def unreachable(board: Board, e: BoardError) -> BoardReport:
    """The report of a board SSH could not reach: its one problem is the connection's (e.stage, e.g. connect,
    auth, host-key), whose message says what to do."""
    msg = str(e).split(": ", 1)[-1] if str(e).startswith(f"board {board.name}, stage ") else str(e)
    return BoardReport(board.name, board.kind, {"ssh": e.stage}, [Problem(board.name, e.stage, msg)])


def inspect_board(board: Board, need: Optional[Need] = None, imports: bool = True,
                  port_owner: Optional[PortOwner] = None, conn: Optional[Connection] = None,
                  timeout: float = CONNECT_TIMEOUT, extra: Optional[Dict[str, Callable[[Context], None]]] = None
                  ) -> BoardReport:
    """Run every check of CHECKS, then those of `extra` (name -> check), on `board` over one SSH connection
    (`conn`, opened here unless open, closed at the end; default a new one with `timeout`). need: what a
    deployment would upload (disk); imports: import numpy and pynq (their versions) rather than only find
    them; port_owner(conn, board): who holds the data port when it is ours (None: not ours). Never raises for
    the board's faults: a board SSH cannot reach gets one problem (its stage: connect, auth, host-key ...)."""
    report = BoardReport(board.name, board.kind)
    conn = conn or Connection(board, timeout=timeout)
    try:
        with conn:
            report.facts["ssh"] = "ok"
            ctx = Context(board, conn, need or Need(), imports, port_owner, report)
            for check in list(CHECKS.values()) + list((extra or {}).values()):
                check(ctx)
    except BoardError as e:  # SSH failed, or the board stopped answering half-way
        if report.facts.get("ssh") != "ok":
            return unreachable(board, e)
        report.problems.append(Problem(board.name, e.stage, str(e).split(": ", 1)[-1]))
    return report


def inspect_boards(boards: List[Board], needs: Optional[Dict[str, Need]] = None, imports: bool = True,
                   port_owner: Optional[PortOwner] = None, connect: Optional[Callable[[Board], Connection]] = None,
                   timeout: float = CONNECT_TIMEOUT, extra: Optional[Dict[str, Callable[[Context], None]]] = None,
                   progress: Callable[[str], None] = lambda s: None) -> List[BoardReport]:
    """inspect_board for every board, in parallel, reports in `boards`' order. needs: board name -> Need;
    connect(board): the Connection to use (e.g. the lease's), or a BoardError raised for a board that cannot
    be had (its report then holds that one problem)."""
    done = [0]

    def one(b: Board) -> BoardReport:
        try:
            conn = connect(b) if connect else None
        except BoardError as e:
            r = unreachable(b, e)
        else:
            r = inspect_board(b, (needs or {}).get(b.name), imports, port_owner, conn, timeout, extra)
        done[0] += 1
        progress(f"  {b.name}: {'ok' if r.ok else f'{len(r.problems)} problem(s)'} ({done[0]}/{len(boards)})")
        return r

    if not boards:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(boards))) as pool:
        return list(pool.map(one, boards))
