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

from splitting.errors import UserError

KINDS = ("pynq-z2", "virtual-pynq-z2")
HOST_KEY_POLICIES = ("strict", "trust-on-first-use")
# Keys that smell of a secret: refused, whatever table they sit in.
_SECRET_RE = re.compile(r"pass(word|wd|phrase)?$|secret|token", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RackError(UserError, ValueError):
    """A rack file that is missing, malformed or inconsistent."""


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
    pynq_version: str = "3.0.1"
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
        return self.kind == "virtual-pynq-z2"

    @property
    def address(self) -> Tuple[str, int]:
        """Where the board's agent accepts frames."""
        return (self.host, self.data_port)

    def __str__(self) -> str:
        return f"{self.name} ({self.user}@{self.host}:{self.port})"


@dataclass
class Rack:
    name: str
    boards: List[Board]
    path: Optional[Path] = None
    virtual_state: Optional[Path] = None  # folder of a virtual rack started by `splitrack rack up`

    def board(self, name: str) -> Board:
        for b in self.boards:
            if b.name == name:
                return b
        raise RackError(f"no board {name!r} in {self.path or 'the rack'}; boards are {', '.join(self.names)}")

    @property
    def names(self) -> List[str]:
        return [b.name for b in self.boards]

    def subset(self, names: List[str]) -> "Rack":
        return Rack(self.name, [self.board(n) for n in names], self.path, self.virtual_state)


# --- reading -------------------------------------------------------------------------------------------
class _Lines:
    """Finds the line of a field in a rack file: tomllib parses values but forgets where they were."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")

    def __init__(self, text: str):
        self.tables: List[Tuple[str, int, Dict[str, int]]] = []  # (table name, header line, key -> line)
        current: Dict[str, int] = {}
        self.tables.append(("", 0, current))
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0] if '"' not in raw else raw
            m = self._HEADER.match(line)
            if m:
                current = {}
                self.tables.append((m.group(1), n, current))
                continue
            k = self._KEY.match(line)
            if k:
                current.setdefault(k.group(1).strip('"'), n)

    def table(self, name: str, nth: int = 0) -> Tuple[int, Dict[str, int]]:
        found = [(ln, keys) for t, ln, keys in self.tables if t == name]
        return found[nth] if nth < len(found) else (0, {})


def _where(path: Path, line: int, field_name: str) -> str:
    return f"{path}:{line}: {field_name}" if line else f"{path}: {field_name}"


def _check_no_secrets(d: Any, path: Path, lines: _Lines, trail: str = "") -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            if _SECRET_RE.search(str(k)):
                line = 0
                for _, _, keys in lines.tables:
                    if k in keys:
                        line = keys[k]
                        break
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
    if not _NAME_RE.match(out["name"]):
        raise RackError(f"{where('name')}: {out['name']!r}: use letters, digits, '.', '_' or '-' (at most 63)")
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


def parse_rack(text: str, path: Path) -> Rack:
    path = Path(path)
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RackError(f"{path}: not valid TOML: {e}") from None
    lines = _Lines(text)
    _check_no_secrets(d, path, lines)
    for k in d:
        if k not in ("rack", "defaults", "boards"):
            ln, _ = lines.table(k)
            raise RackError(f"{_where(path, ln, k)}: unknown table; a rack file has [rack], [defaults] and [[boards]]")
    rack_t = d.get("rack", {})
    rline, rkeys = lines.table("rack")
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
        for end in ((b.host, b.port), (b.host, b.data_port)):
            if end in ends and ends[end] is not b:
                raise RackError(
                    f"{path}:{b.line}: port: {end[0]}:{end[1]} is also used by board {ends[end].name!r}; "
                    "give every board its own SSH and data port"
                )
            ends[end] = b
        if b.port == b.data_port:
            raise RackError(f"{path}:{b.line}: data_port: equals the SSH port {b.port}; pick another")
    name = rack_t.get("name", path.stem)
    vs = rack_t.get("virtual_state")
    return Rack(str(name), boards, path, (path.parent / vs).resolve() if vs else None)


def load_rack(path) -> Rack:
    path = Path(path).expanduser()
    if not path.is_file():
        raise RackError(
            f"{path}: rack file not found; write one like boards.toml in the repository, "
            "or start a virtual rack with `splitrack rack up --boards 5 --out rack.toml`"
        )
    rack = parse_rack(path.read_text(), path.resolve())
    for b in rack.boards:
        if not b.key.is_file():
            ln = b.field_lines.get("key", b.line)
            raise RackError(f"{path}:{ln}: key: {b.key} not found; create it with ssh-keygen or fix the path")
    return rack


# --- writing (virtual racks write their own file) ------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dump_rack(rack: Rack, comment: str = "") -> str:
    out = [f"# {c}" for c in comment.splitlines()] if comment else []
    out += ["[rack]", f"name = {_toml_value(rack.name)}"]
    if rack.virtual_state:
        out.append(f"virtual_state = {_toml_value(rack.virtual_state)}")
    defaults = Board(name="x", host="x", kind="pynq-z2", key=Path("x"))
    for b in rack.boards:
        out += ["", "[[boards]]"]
        for f in fields(Board):
            if f.name in ("line", "field_lines"):
                continue
            v = getattr(b, f.name)
            if v is None or (f.name not in ("name", "host", "kind", "key") and v == getattr(defaults, f.name)
                             and f.name != "known_hosts"):
                continue
            out.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(out) + "\n"


def write_rack(rack: Rack, path, comment: str = "") -> Path:
    path = Path(path)
    path.write_text(dump_rack(rack, comment))
    rack.path = path.resolve()
    return path
