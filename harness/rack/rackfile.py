"""The rack: which boards exist and how to reach them, read from a boards.toml file.

This is labgrid's "resource" layer: plain data, validated once, with errors that name the file, the line and
the field. How to talk to a board lives in `harness.rack.ssh`; how to bring it to a state lives in `harness.rack.deploy`.

```toml
[rack]
name = "lab"

[defaults]                      # merged into every [[boards]] entry (optional)
user = "xilinx"
key = "~/.ssh/pynq_ed25519"

[[boards]]
name = "pynq-a"
host = "192.168.2.99"
kind = "pynq-z2"
```

No passwords: SSH runs with key files only (a passphrase-protected key is unlocked by ssh-agent, never here).
"""
from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import tomli_w

from splitting.errors import UserError
from splitting.names import name_problem

KINDS = ("pynq-z2", "virtual-pynq-z2")
HOST_KEY_POLICIES = ("strict", "trust-on-first-use")
# Keys that smell of a secret: refused, whatever table they sit in.
_SECRET_RE = re.compile(r"pass(word|wd|phrase)?$|secret|token", re.IGNORECASE)


class RackError(UserError, ValueError):
    """A rack file that is missing, malformed or inconsistent."""


class RackStopped(RackError):
    """The rack file of a virtual rack that is not running (stopped by `rack down`, or never started here)."""


@dataclass
class Board:
    """One board of the rack: how to reach it over SSH, and where its agent listens for frames."""

    name: str
    host: str
    kind: str
    key: Path  # private key file (absolute once loaded)
    port: int = 22
    user: str = "xilinx"
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    host_key_policy: str = "strict"
    pynq_version: Optional[str] = None  # the PYNQ release the board must carry (`splitrack doctor` checks it)
    data_port: int = 7700
    python: str = "python3"  # the board's interpreter that runs the agent (PYNQ 3: its venv's python3)
    sudo: bool = False  # run the agent with sudo (PYNQ's Overlay needs root on a real board)
    workdir: str = "splitrack"  # folder on the board, relative to the user's home unless absolute
    power_cycle: Optional[List[str]] = None  # local command (argument list) that power-cycles the board
    timing: Optional[str] = None  # virtual boards: "estimate" makes the agent take the FPGA's time
    line: int = 0  # line of its [[boards]] header in the rack file, for messages
    field_lines: Dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # field -> line

    @property
    def virtual(self) -> bool:
        """True for a virtual board (kind 'virtual-pynq-z2', started by `splitrack rack up`)."""
        return self.kind == "virtual-pynq-z2"

    @property
    def address(self) -> Tuple[str, int]:
        """Where the board's agent accepts frames."""
        return (self.host, self.data_port)

    def __str__(self) -> str:
        return f"{self.name} ({self.user}@{self.host}:{self.port})"


@dataclass
class Rack:
    """A named set of boards from one rack file: `path` is that file, `virtual_state` the state folder of a
    virtual rack, `lab` the labgrid coordinator of a shared rack (whose `boards` are then empty until leased)."""

    name: str
    boards: List[Board]
    path: Optional[Path] = None
    virtual_state: Optional[Path] = None  # folder of a virtual rack started by `splitrack rack up`
    lab: Optional["LabSpec"] = None  # a shared rack: boards come from a labgrid coordinator (harness.rack.lab_lease)

    def board(self, name: str) -> Board:
        """The board called `name`; raises RackError when the rack has none."""
        for b in self.boards:
            if b.name == name:
                return b
        raise RackError(f"no board {name!r} in {self.path or 'the rack'}; boards are {', '.join(self.names)}")

    @property
    def names(self) -> List[str]:
        """The boards' names, in rack-file order."""
        return [b.name for b in self.boards]

    def subset(self, names: List[str]) -> "Rack":
        """A Rack of the boards called `names` (in that order), same name and file; raises RackError for an
        unknown name."""
        return Rack(self.name, [self.board(n) for n in names], self.path, self.virtual_state)


# --- reading -------------------------------------------------------------------------------------------
class _Lines:
    """Finds the line of a field in a rack file: tomllib parses values but forgets where they were."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")

    def __init__(self, text: str):
        self.tables: List[Tuple[str, int, Dict[str, int]]] = []  # (table name, header line, key -> line)
        self._by_name: Dict[str, List[Tuple[int, Dict[str, int]]]] = {}  # name -> its tables in file order
        self.first_line: Dict[str, int] = {}  # key -> the first line that sets it, in any table
        current: Dict[str, int] = {}
        self.tables.append(("", 0, current))
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0] if '"' not in raw else raw
            m = self._HEADER.match(line)
            if m:
                current = {}
                self.tables.append((m.group(1), n, current))
                self._by_name.setdefault(m.group(1), []).append((n, current))
                continue
            k = self._KEY.match(line)
            if k:
                key = k.group(1).strip('"')
                current.setdefault(key, n)
                self.first_line.setdefault(key, n)

    def table(self, name: str, nth: int = 0) -> Tuple[int, Dict[str, int]]:
        """(header line, key -> line) of the nth table called `name`, (0, {}) when there is none: a lookup,
        not a scan (a rack of 10,000 boards looks up 10,000 tables)."""
        found = self._by_name.get(name, ())
        return found[nth] if nth < len(found) else (0, {})


def _where(path: Path, line: int, field_name: str) -> str:
    return f"{path}:{line}: {field_name}" if line else f"{path}: {field_name}"


def _check_no_secrets(d: Any, path: Path, lines: _Lines, trail: str = "") -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            if _SECRET_RE.search(str(k)):
                line = lines.first_line.get(k, 0)
                raise RackError(
                    f"{_where(path, line, trail + k)}: passwords and secrets do not belong in a rack file; "
                    f"give a key file with `key = \"...\"` (unlock a protected key with ssh-agent)"
                )
            _check_no_secrets(v, path, lines, f"{trail}{k}.")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            _check_no_secrets(v, path, lines, f"{trail.rstrip('.')}[{i}].")


_BOARD_FIELDS = {f.name: f for f in fields(Board) if f.name not in ("line", "field_lines")}


def _board_from(d: Dict[str, Any], path: Path, line: int, keys: Dict[str, int]) -> Board:
    def where(name: str) -> str:
        return _where(path, keys.get(name, line), name)

    for k in d:
        if k not in _BOARD_FIELDS:
            raise RackError(f"{where(k)}: unknown field; a board has {', '.join(_BOARD_FIELDS)}")
    for req in ("name", "host", "kind", "key"):
        if req not in d:
            raise RackError(f"{_where(path, line, req)}: missing; every [[boards]] entry needs name, host, kind and key")

    def text(name: str) -> str:
        v = d[name]
        if not isinstance(v, str) or not v.strip():
            raise RackError(f"{where(name)}: must be a non-empty string, got {v!r}")
        return v.strip()

    def port(name: str) -> int:
        v = d[name]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
            raise RackError(f"{where(name)}: must be a port number 1..65535, got {v!r}")
        return v

    def local_path(name: str) -> Path:
        p = Path(text(name)).expanduser()
        return p if p.is_absolute() else (path.parent / p).resolve()

    out: Dict[str, Any] = {"line": line, "field_lines": dict(keys)}
    out["name"] = text("name")
    if name_problem("board", out["name"]):
        raise RackError(f"{where('name')}: {name_problem('board', out['name'])}")
    out["host"] = text("host")
    out["kind"] = text("kind")
    if out["kind"] not in KINDS:
        raise RackError(f"{where('kind')}: {out['kind']!r} is not a board kind; use one of {', '.join(KINDS)}")
    out["key"] = local_path("key")
    for name in ("port", "data_port"):
        if name in d:
            out[name] = port(name)
    for name in ("user", "pynq_version", "python", "workdir"):
        if name in d:
            out[name] = text(name)
    if "pynq_version" in out:
        from packaging.version import InvalidVersion, Version

        try:
            Version(out["pynq_version"])
        except InvalidVersion:
            raise RackError(f"{where('pynq_version')}: {out['pynq_version']!r} is not a version; give the PYNQ "
                            "release the board carries, e.g. \"3.0.1\" (`pip show pynq` on the board)") from None
    if "workdir" in out:
        w = out["workdir"]
        if w.startswith("~") and not (w == "~" or w.startswith("~/")):
            raise RackError(f"{where('workdir')}: {w!r}: `~user` is not supported; give the folder relative to the "
                            "board user's home (e.g. \"splitrack\" or \"~/splitrack\") or absolute")
        if "\0" in w or "\n" in w:
            raise RackError(f"{where('workdir')}: {w!r}: a folder name cannot hold a newline or NUL")
        if normal_workdir(w) in ("", "/"):
            raise RackError(f"{where('workdir')}: {w!r} is the home or root folder itself; give a folder of its own "
                            "(deploy writes and removes files there)")
    if "known_hosts" in d:
        out["known_hosts"] = local_path("known_hosts")
    if "host_key_policy" in d:
        out["host_key_policy"] = text("host_key_policy")
        if out["host_key_policy"] not in HOST_KEY_POLICIES:
            raise RackError(f"{where('host_key_policy')}: use one of {', '.join(HOST_KEY_POLICIES)}")
    if "sudo" in d:
        if not isinstance(d["sudo"], bool):
            raise RackError(f"{where('sudo')}: must be true or false")
        out["sudo"] = d["sudo"]
    if "power_cycle" in d:
        v = d["power_cycle"]
        if isinstance(v, str):
            v = shlex.split(v)
        if not isinstance(v, list) or not v or not all(isinstance(a, str) for a in v):
            raise RackError(f"{where('power_cycle')}: give the command as a string or a list of arguments")
        out["power_cycle"] = v
    if "timing" in d:
        out["timing"] = text("timing")
        if out["timing"] != "estimate":
            raise RackError(f"{where('timing')}: the only timing model is \"estimate\" (cycles from the plan at 100 MHz)")
        if out["kind"] != "virtual-pynq-z2":
            raise RackError(f"{where('timing')}: a timing model only applies to virtual boards; remove it")
    return Board(**out)


MAX_DEPTH = 4  # document > boards > board > power_cycle list


def _depth(v: Any) -> int:
    """Nesting depth of parsed TOML, iteratively (a recursive walk is what deep nesting breaks)."""
    deepest, todo = 0, [(v, 0)]
    while todo:
        x, d = todo.pop()
        if isinstance(x, dict):
            todo.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            todo.extend((y, d + 1) for y in x)
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
        if deepest > MAX_DEPTH + 1:
            break
    return deepest - 1 if deepest else 0


def _key_line(lines: "_Lines", key: str) -> int:
    return lines.first_line.get(key) or lines.table(key)[0]


_LOOPBACK = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "127.0.0.1", "::1"}


def normal_host(host: str) -> str:
    """A host name as one spelling per address, for finding two boards that are one: lower case, no trailing
    dot, IP literals in canonical form, and every spelling of this machine's loopback as 127.0.0.1. Names
    are not looked up in DNS (a rack file must load without the network)."""
    import ipaddress

    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        ip = ipaddress.ip_address(h)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        h = str(ip)
    except ValueError:
        pass
    return "127.0.0.1" if h in _LOOPBACK else h


def normal_workdir(workdir: str) -> str:
    """A board folder as written in a rack file, without `~/`, `./`, doubled or trailing slashes: two
    spellings of one folder compare equal (relative ones are relative to the home)."""
    import posixpath

    w = workdir.strip()
    if w == "~" or w.startswith("~/"):
        w = w[2:]
    absolute = w.startswith("/")
    w = posixpath.normpath(w) if w else "."
    if not absolute:
        w = "" if w == "." else w
    return w


def parse_rack(text: str, path: Path) -> Rack:
    """The Rack described by TOML `text` (`path` is used in messages and to resolve relative paths); key
    files are not checked here. Raises RackError for invalid TOML, a secret-looking key, unknown tables or
    fields, no boards, duplicate names, or two boards on one SSH or data port, with file:line."""
    path = Path(path)
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RackError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise RackError(f"{path}: not a rack file: values nested too deeply for TOML's parser") from None
    lines = _Lines(text)
    depth = _depth(d)
    if depth > MAX_DEPTH:
        raise RackError(f"{path}: not a rack file: values nested more than {MAX_DEPTH} levels deep (a rack file "
                        "needs no more); see boards.toml in the repository")
    _check_no_secrets(d, path, lines)
    for k in d:
        if k not in ("rack", "defaults", "boards"):
            ln, _ = lines.table(k)
            raise RackError(f"{_where(path, ln, k)}: unknown table; a rack file has [rack], [defaults] and [[boards]]")
    rack_t = d.get("rack", {})
    rline, rkeys = lines.table("rack")
    if not isinstance(rack_t, dict):
        raise RackError(f"{_where(path, _key_line(lines, 'rack'), 'rack')}: must be a table ([rack] with name), "
                        f"got {rack_t!r}")
    if isinstance(rack_t, dict) and "coordinator" in rack_t:
        return _lab_rack(d, path, lines)
    for k in rack_t:
        if k not in ("name", "virtual_state"):
            raise RackError(f"{_where(path, rkeys.get(k, rline), 'rack.' + k)}: unknown field; [rack] has name and virtual_state")
    defaults = d.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RackError(f"{path}: defaults must be a table ([defaults])")
    dline, dkeys = lines.table("defaults")
    for k in defaults:
        if k not in _BOARD_FIELDS or k == "name":
            raise RackError(f"{_where(path, dkeys.get(k, dline), 'defaults.' + k)}: not a field boards can share")
    raw_boards = d.get("boards")
    if not isinstance(raw_boards, list) or not raw_boards:
        raise RackError(f"{path}: no boards; add at least one [[boards]] table with name, host, kind and key")
    boards: List[Board] = []
    for i, b in enumerate(raw_boards):
        line, keys = lines.table("boards", i)
        if not isinstance(b, dict):
            raise RackError(f"{_where(path, line or _key_line(lines, 'boards'), f'boards[{i}]')}: must be a table "
                            f"([[boards]] with name, host, kind and key), got {b!r}")
        merged = dict(defaults)
        merged.update(b)
        # fields that came from [defaults] point at their line there
        where_keys = {k: (keys[k] if k in keys else dkeys.get(k, line)) for k in merged}
        boards.append(_board_from(merged, path, line, where_keys))
    seen: Dict[str, Board] = {}
    ends: Dict[Tuple[str, int], Board] = {}
    for b in boards:
        if b.name in seen:
            raise RackError(f"{path}:{b.line}: name: board {b.name!r} is already defined on line {seen[b.name].line}")
        seen[b.name] = b
        host = normal_host(b.host)
        for end in ((host, b.port), (host, b.data_port)):
            if end in ends and ends[end] is not b:
                same = "" if ends[end].host == b.host else f" ({ends[end].host} and {b.host} are one host)"
                raise RackError(
                    f"{path}:{b.line}: port: {end[0]}:{end[1]} is also used by board {ends[end].name!r}{same}; "
                    "give every board its own SSH and data port"
                )
            ends[end] = b
        # two boards reached through different addresses or ports can still be one folder on one machine;
        # that is found where it can be seen, on the boards (harness.rack.lease: a board finds our own lease)
        if b.port == b.data_port:
            raise RackError(f"{path}:{b.line}: data_port: equals the SSH port {b.port}; pick another")
    name = rack_t.get("name", path.stem)
    vs = rack_t.get("virtual_state")
    return Rack(str(name), boards, path, (path.parent / vs).resolve() if vs else None)


@dataclass
class LabSpec:
    """A rack file whose boards live in labgrid: the coordinator, the place tags that select the boards, and
    the board fields labgrid does not hold (key, known_hosts, python, workdir, ...)."""

    coordinator: str  # HOST:PORT
    tags: Dict[str, str]
    defaults: Dict[str, Any]
    default_lines: Dict[str, int] = field(default_factory=dict)


_LAB_DEFAULTS = ("key", "known_hosts", "host_key_policy", "python", "sudo", "workdir", "timing")
_TAG_KEY_RE = re.compile(r"^[a-z][a-z0-9_]+$")  # labgrid's TAG_KEY


def _lab_rack(d: Dict[str, Any], path: Path, lines: _Lines) -> Rack:
    """[rack] coordinator = "HOST:PORT" (tags = {...}) and [defaults]; no [[boards]]: labgrid lists them."""
    rline, rkeys = lines.table("rack")
    dline, dkeys = lines.table("defaults")
    rack_t, defaults = d["rack"], d.get("defaults", {})
    for k in rack_t:
        if k not in ("name", "coordinator", "tags"):
            raise RackError(f"{_where(path, rkeys.get(k, rline), 'rack.' + k)}: unknown field; a shared rack's "
                            "[rack] has name, coordinator and tags")
    if "boards" in d:
        raise RackError(f"{_where(path, lines.table('boards')[0], 'boards')}: a rack with a coordinator takes its "
                        "boards from labgrid's places; remove the [[boards]] tables (or the coordinator)")
    coord = rack_t["coordinator"]
    if not isinstance(coord, str) or not re.match(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$", coord.strip()) \
            or not 1 <= int(coord.rsplit(":", 1)[1]) <= 65535:
        raise RackError(f"{_where(path, rkeys.get('coordinator', rline), 'rack.coordinator')}: {coord!r} is not "
                        "HOST:PORT (e.g. \"lab-server:20408\")")
    tags = rack_t.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and _TAG_KEY_RE.match(k) and isinstance(v, str)
                                             and v and v == v.strip() for k, v in tags.items()):
        raise RackError(f"{_where(path, rkeys.get('tags', rline), 'rack.tags')}: give a table of labgrid tags, "
                        "keys like `rack` or `pynq_version` ([a-z][a-z0-9_]+), non-empty string values")
    if not isinstance(defaults, dict):
        raise RackError(f"{path}: defaults must be a table ([defaults])")
    for k in defaults:
        if k not in _LAB_DEFAULTS:
            raise RackError(f"{_where(path, dkeys.get(k, dline), 'defaults.' + k)}: not a field a shared rack can "
                            f"set; labgrid holds the rest. Use {', '.join(_LAB_DEFAULTS)}")
    if "key" not in defaults:
        raise RackError(f"{_where(path, dline, 'defaults.key')}: missing; a shared rack needs the SSH key file")
    # the same checks a board's fields get, on a stand-in board
    probe = _board_from(dict(defaults, name="probe", host="probe", kind="pynq-z2"), path, dline, dict(dkeys))
    resolved = {k: getattr(probe, k) for k in defaults}
    name = rack_t.get("name", path.stem)
    return Rack(str(name), [], path, None, LabSpec(coord.strip(), dict(tags), resolved, dict(dkeys)))


def load_rack(path) -> Rack:
    """Read and parse the rack file at `path` and check that its key files exist. Raises RackError when the
    file is missing or unreadable, invalid (see parse_rack) or a key file is missing; RackStopped (a
    RackError) for a virtual rack that is not running."""
    from splitting.untrusted import MiB, read_bytes

    path = Path(path).expanduser()
    try:  # bounded and never blocking (a FIFO or /dev/zero given as the rack file is refused at once)
        text = read_bytes(path, 16 * MiB, str(path), error=RackError).decode()
    except FileNotFoundError:
        raise RackError(
            f"{path}: rack file not found; write one like boards.toml in the repository, "
            "or start a virtual rack with `splitrack rack up --n-boards 5 --out rack.toml`"
        ) from None
    except UnicodeDecodeError as e:
        raise RackError(f"{path}: cannot read the rack file: {e}") from None
    rack = parse_rack(text, path.resolve())
    # a stopped virtual rack loses its state folder (keys included): say that, not "key not found"
    if rack.virtual_state is not None and not (rack.virtual_state / "rack.json").is_file():
        raise RackStopped(f"{path}: this virtual rack is stopped; start it with "
                          f"`splitrack rack up --n-boards {len(rack.boards)} --out {path}`")
    if rack.lab and not Path(rack.lab.defaults["key"]).is_file():
        raise RackError(f"{path}:{rack.lab.default_lines.get('key', 0)}: key: {rack.lab.defaults['key']} not found")
    for b in rack.boards:
        if not b.key.is_file():
            ln = b.field_lines.get("key", b.line)
            raise RackError(f"{path}:{ln}: key: {b.key} not found; create it with ssh-keygen or fix the path")
    return rack


# --- writing (virtual racks write their own file) ------------------------------------------------------
def _toml(v: Any) -> Any:
    """A field's value as TOML has it: paths as text, lists element by element."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_toml(x) for x in v]
    return v


def dump_rack(rack: Rack, comment: str = "") -> str:
    """The TOML text of `rack` (written by tomli-w): [rack] and one [[boards]] per board, fields at their
    default left out except name, host, kind, key and known_hosts, each line of `comment` as a leading '# '
    line."""
    head = {"name": rack.name}
    if rack.virtual_state:
        head["virtual_state"] = str(rack.virtual_state)
    defaults = Board(name="x", host="x", kind="pynq-z2", key=Path("x"))
    boards = []
    for b in rack.boards:
        d = {}
        for f in fields(Board):
            v = getattr(b, f.name)
            if f.name in ("line", "field_lines") or v is None or (
                    f.name not in ("name", "host", "kind", "key", "known_hosts") and v == getattr(defaults, f.name)):
                continue
            d[f.name] = _toml(v)
        boards.append(d)
    doc = {"rack": head, "boards": boards} if boards else {"rack": head}
    lead = "".join(f"# {c}\n" for c in comment.splitlines()) if comment else ""
    return lead + tomli_w.dumps(doc)


def write_rack(rack: Rack, path, comment: str = "") -> Path:
    """Write `dump_rack(rack, comment)` to `path`, set `rack.path` to it (resolved) and return `path`.
    Raises OSError when the file cannot be written."""
    path = Path(path)
    path.write_text(dump_rack(rack, comment))
    rack.path = path.resolve()
    return path
