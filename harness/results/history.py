"""Result history: one SQLite file, one row per (rack, machine, commit, plan hash, metric, hop, time).

What goes in: the JSON of `splitrack bench --json` and of pytest-benchmark (`--benchmark-json`), both
flattened to rows by the importers here. What comes out: series of one metric over runs, in time order,
for regression detection and the dashboard. A series is keyed by rack, machine, plan hash, metric and
hop: the commit is what changes along it.

    splitrack history add out.json --db results.sqlite
    splitrack history list --db results.sqlite
    splitrack history check --db results.sqlite     # exit 1 on a regression in effect
"""
from __future__ import annotations

import json
import platform
import sqlite3
import subprocess
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from splitting.errors import UserError

BENCH_KIND = "splitrack-bench"
STAT_KEYS = ("p50", "p90", "p99", "max", "jitter")

SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    time      TEXT NOT NULL,   -- ISO 8601 UTC of the run; rows of one run share it
    rack      TEXT NOT NULL,
    machine   TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    metric    TEXT NOT NULL,   -- what: "single p50", "stream throughput", "cpu p50", "pytest test_x median"
    hop       TEXT NOT NULL,   -- where: "e2e", "link host->p0", "board p0", "keras batch 1", ...
    value     REAL NOT NULL,
    unit      TEXT NOT NULL,
    source    TEXT NOT NULL,   -- "bench" or "pytest-benchmark"
    PRIMARY KEY (rack, machine, commit_id, plan_hash, metric, hop, time)
);
CREATE INDEX IF NOT EXISTS by_series ON measurements (rack, machine, plan_hash, metric, hop, time);
"""


class HistoryError(UserError):
    """A results file the history cannot read, or a database that is not ours."""


@dataclass(frozen=True)
class Row:
    time: str
    rack: str
    machine: str
    commit_id: str
    plan_hash: str
    metric: str
    hop: str
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class SeriesKey:
    rack: str
    machine: str
    plan_hash: str
    metric: str
    hop: str

    def label(self) -> str:
        return f"{self.metric} [{self.hop}]"


@dataclass(frozen=True)
class Point:
    time: str
    commit_id: str
    value: float
    unit: str


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def machine_name() -> str:
    return platform.node() or "unknown"


def current_commit(cwd: Optional[Path] = None) -> str:
    """Short hash of HEAD, "+dirty" when tracked files changed; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- importers ------------------------------------------------------------------------------------
def rows_from_bench(doc: Dict) -> List[Row]:
    """Rows of one `splitrack bench --json` document."""
    try:
        base = dict(time=doc["time"], rack=doc["rack"], machine=doc["machine"], commit_id=doc["commit"],
                    plan_hash=doc["plan_hash"], source="bench")
        rows = []
        for mode, rep in doc["reports"].items():
            for hop, st in rep["stats"].items():
                for k in STAT_KEYS:
                    rows.append(Row(metric=f"{mode} {k}", hop=hop, value=float(st[k]), unit="us", **base))
            for hop, v in rep["breakdown_p50_us"].items():
                rows.append(Row(metric=f"{mode} breakdown p50", hop=hop, value=float(v), unit="us", **base))
            if rep.get("throughput_hz") is not None:
                rows.append(Row(metric=f"{mode} throughput", hop="e2e", value=float(rep["throughput_hz"]),
                                unit="frames/s", **base))
        for name, st in doc.get("cpu", {}).items():
            for k in ("p50", "p99"):
                if k in st:
                    rows.append(Row(metric=f"cpu {k}", hop=name, value=float(st[k]), unit="us", **base))
        for name, acc in doc.get("accuracy", {}).items():
            rows.append(Row(metric="accuracy", hop=name, value=float(acc), unit="fraction", **base))
    except (KeyError, TypeError, ValueError) as e:
        raise HistoryError(f"bench JSON is missing or mangles field {e}: write it with `splitrack bench --json`") from None
    return [r for r in rows if r.value == r.value]  # NaN (e.g. throughput of one frame) is no measurement


def rows_from_pytest_benchmark(doc: Dict, rack: Optional[str] = None) -> List[Row]:
    """Rows of a pytest-benchmark JSON file: its stats (s -> us) and our per-hop extra_info."""
    try:
        time = doc["datetime"]
        if "+" not in time[10:] and not time.endswith("Z"):
            time += "+00:00"  # pytest-benchmark writes UTC without a zone
        machine = doc.get("machine_info", {}).get("node") or machine_name()
        commit = doc.get("commit_info", {}).get("id") or "unknown"
        if doc.get("commit_info", {}).get("dirty"):
            commit = commit[:12] + "+dirty"
        else:
            commit = commit[:12]
        rows = []
        for b in doc["benchmarks"]:
            extra = b.get("extra_info", {}) or {}
            base = dict(time=time, rack=extra.get("rack") or rack or "none", machine=machine, commit_id=commit,
                        plan_hash=extra.get("plan_hash", "none"), source="pytest-benchmark")
            name = b["name"]
            for k in ("median", "mean", "min", "max", "stddev"):
                rows.append(Row(metric=f"pytest {name} {k}", hop="e2e", value=float(b["stats"][k]) * 1e6,
                                unit="us", **base))
            for hop, st in (extra.get("hops") or {}).items():
                for k, v in st.items():
                    if k in STAT_KEYS:
                        rows.append(Row(metric=f"pytest {name} {k}", hop=hop, value=float(v), unit="us", **base))
            for hop, v in (extra.get("breakdown_p50_us") or {}).items():
                rows.append(Row(metric=f"pytest {name} breakdown p50", hop=hop, value=float(v), unit="us", **base))
    except (KeyError, TypeError, ValueError) as e:
        raise HistoryError(f"pytest-benchmark JSON lacks field {e}: write it with `pytest --benchmark-json FILE`") from None
    return rows


def rows_from_file(path: Path, rack: Optional[str] = None) -> List[Row]:
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"{path} not found: give a file written by `splitrack bench --json` or `--benchmark-json`")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HistoryError(f"{path} is not JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(doc, dict) and doc.get("kind") == BENCH_KIND:
        return rows_from_bench(doc)
    if isinstance(doc, dict) and "benchmarks" in doc and "machine_info" in doc:
        return rows_from_pytest_benchmark(doc, rack)
    raise HistoryError(f"{path} is neither `splitrack bench --json` nor pytest-benchmark JSON")


# --- the database ---------------------------------------------------------------------------------
class History:
    """The SQLite history file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise HistoryError(f"{self.path} is a folder: give a file name for the history database")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"{self.path} is not a splitrack history database ({e}): give another --db") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, rows: Iterable[Row]) -> int:
        """Insert rows; a row already present (same key) is kept once. Returns how many were new."""
        cols = ", ".join(f.name for f in fields(Row))
        with self.db:
            before = self.db.total_changes
            self.db.executemany(f"INSERT OR IGNORE INTO measurements ({cols}) VALUES ({', '.join('?' * 10)})",
                                [astuple(r) for r in rows])
            return self.db.total_changes - before

    def runs(self) -> List[Tuple[str, str, str, str, str, int]]:
        """(time, rack, machine, commit, plan hash, rows) per run, oldest first."""
        return self.db.execute(
            "SELECT time, rack, machine, commit_id, plan_hash, COUNT(*) FROM measurements "
            "GROUP BY time, rack, machine, commit_id, plan_hash ORDER BY time").fetchall()

    def keys(self, metric_like: str = "%") -> List[SeriesKey]:
        return [SeriesKey(*r) for r in self.db.execute(
            "SELECT DISTINCT rack, machine, plan_hash, metric, hop FROM measurements WHERE metric LIKE ? "
            "ORDER BY rack, machine, plan_hash, metric, hop", (metric_like,))]

    def series(self, key: SeriesKey) -> List[Point]:
        return [Point(*r) for r in self.db.execute(
            "SELECT time, commit_id, value, unit FROM measurements WHERE rack=? AND machine=? AND plan_hash=? "
            "AND metric=? AND hop=? ORDER BY time", (key.rack, key.machine, key.plan_hash, key.metric, key.hop))]

    def rows(self, where: str = "1", args: Sequence = ()) -> List[Row]:
        return [Row(*r) for r in self.db.execute(
            f"SELECT {', '.join(f.name for f in fields(Row))} FROM measurements WHERE {where} ORDER BY time", args)]
