"""Result history: one SQLite file of runs, their figures and their per-frame samples.

What goes in: the JSON of `splitrack bench --json` (complete, or incomplete with its error and the frames
that did come back) and of pytest-benchmark (`--benchmark-json`), flattened to rows by the importers here.
Per run it keeps the label (the user's name for the series, default the model's name), model, plan hash,
rack, board versions, machine, the user's commit and splitrack's version (`harness.results.stamp`), time,
complete or not with the error, each hop's position on the critical path, the controls measured beside the
rack (`harness.measure.controls`: loopback echo, CPU, board probes; the host's load in the environment), and
the per-frame samples of every hop (float32) so that two runs can be compared with a two-sample test
(`harness.results.compare`). A series is the user's label, model and rack (`SeriesKey`, one metric of one hop
of it): the commit is what changes along it, and a new plan hash, splitrack version, tuning (FIFO depths)
or machine is an event on it (`harness.results.series`), not another series.

The file identifies itself (SQLite application_id) and carries its schema version (user_version); an
older splitrack history is migrated in place, any other SQLite file is refused untouched, and a damaged
one (SQLite's integrity check) is refused with exit status 2.

    splitrack history add out.json --db results.sqlite [--label NAME]
    splitrack history list | check | compare A B | ack RUN --why TEXT | export RUN --format bmf
"""
from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import astuple, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from splitting.errors import UserError
from splitting.untrusted import read_json

from .stamp import BENCH_KIND, RUN_KIND, machine_name, now_iso

STAT_KEYS = ("p50", "p90", "p99", "max", "jitter")
APPLICATION_ID = 0x53504C54  # "SPLT": marks the file as a splitrack history (PRAGMA application_id)
SCHEMA_VERSION = 3
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA_V1 = """
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
# version 2: a row per run with its context, per-frame samples, acknowledgements; measurements point at runs
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS runs (
    run_id    INTEGER PRIMARY KEY,
    time      TEXT NOT NULL,
    rack      TEXT NOT NULL,
    machine   TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    label     TEXT NOT NULL,   -- the user's name of the series (default: the model's name)
    model     TEXT NOT NULL,
    source    TEXT NOT NULL,
    complete  INTEGER NOT NULL,
    error     TEXT NOT NULL,   -- why an incomplete run stopped ('' when complete)
    env       TEXT NOT NULL,   -- JSON: boards (kind, versions), placement, clocks, data, frames
    hops      TEXT NOT NULL,   -- JSON: mode -> hop names in critical-path order (position = index)
    UNIQUE (time, rack, machine, commit_id, plan_hash)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    mode   TEXT NOT NULL,      -- "single", "stream"
    kind   TEXT NOT NULL,      -- "hop" (the hop's own time), "critical" (its share of the critical path), "e2e"
    hop    TEXT NOT NULL,
    n      INTEGER NOT NULL,
    data   BLOB NOT NULL,      -- zlib of little-endian float32 microseconds, one per frame
    PRIMARY KEY (run_id, mode, kind, hop)
);
CREATE TABLE IF NOT EXISTS acks (
    run_id INTEGER PRIMARY KEY REFERENCES runs(run_id),
    why    TEXT NOT NULL,
    time   TEXT NOT NULL
);
"""


class HistoryError(UserError):
    """A results file the history cannot read, or a database that is not ours."""


@dataclass(frozen=True)
class Row:
    """One figure of one run (a row of the measurements table): time (ISO 8601 UTC), where and what
    (rack, machine, commit_id, plan_hash, metric, hop), value in `unit` (e.g. us, frames/s), source
    ('bench' or 'pytest-benchmark')."""

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
    """One metric of one hop of a series. A series is the user's label, model and rack: a new plan hash,
    splitrack version, tuning or machine along it is an event on the series (harness.results.series), not a
    new series."""

    label: str
    model: str
    rack: str
    metric: str
    hop: str

    @property
    def series(self) -> Tuple[str, str, str]:
        """(label, model, rack): the series this metric belongs to."""
        return (self.label, self.model, self.rack)

    def describe(self) -> str:
        """'metric [hop]', for reports."""
        return f"{self.metric} [{self.hop}]"


@dataclass(frozen=True)
class Point:
    """One value of a series: the run's time (ISO 8601 UTC), commit, value in `unit`, run id."""

    time: str
    commit_id: str
    value: float
    unit: str
    run_id: int = 0


@dataclass
class RunInfo:
    """One run's context (a row of the runs table). env: JSON-able dict (boards, placement, data, host load,
    tuning, ...); hops: mode -> hop names in critical-path order; commit_id: the user's commit; splitrack:
    splitrack's version (harness.results.stamp.splitrack_version; '' in histories written before it was kept)."""

    time: str
    rack: str
    machine: str
    commit_id: str
    plan_hash: str
    label: str
    model: str = ""
    source: str = "bench"
    complete: bool = True
    error: str = ""
    env: Dict = field(default_factory=dict)
    hops: Dict[str, List[str]] = field(default_factory=dict)
    run_id: int = 0
    splitrack: str = ""

    @property
    def series(self) -> Tuple[str, str, str]:
        """(label, model, rack): the series the run belongs to."""
        return (self.label, self.model, self.rack)

    def describe(self) -> str:
        """One line naming the run: id, label, model, plan, rack, commit, time, complete or INCOMPLETE with its error."""
        state = "complete" if self.complete else f"INCOMPLETE ({self.error})"
        return (f"run {self.run_id} {self.label!r} ({self.model or 'model ?'}, plan {self.plan_hash}, rack {self.rack}, "
                f"commit {self.commit_id}, {self.time[:19]}) {state}")

    def board_of(self, hop: str) -> str:
        """The board(s) behind a hop name ("board p1" -> its board, "link a->b" -> "A -> B"), '' when unknown."""
        placement = self.env.get("placement") or {}
        if hop.startswith("board "):
            return placement.get(hop.split(" ", 1)[1].split(" ")[0], "")
        if hop.startswith("link ") and "->" in hop:
            a, b = hop[5:].split("->", 1)
            return f"{placement.get(a, a)} -> {placement.get(b, b)}"
        return ""


# --- importers ------------------------------------------------------------------------------------
def rows_from_bench(doc: Dict) -> List[Row]:
    """Rows of one `splitrack bench --json` document (an incomplete one gives the figures it has)."""
    return parse_bench(doc)[1]


Samples = Dict[Tuple[str, str, str], np.ndarray]  # (mode, kind, hop) -> per-frame us


def _compute_field(v) -> Dict[str, Dict]:
    """A document's per-partition "compute" (harness.measure.compute_source.ComputeSource.to_dict), checked:
    {partition: {label, what, fpga_note: strings; fpga: a dict or null}}; TypeError names what is wrong."""
    if not isinstance(v, dict) or not all(isinstance(d, dict) for d in v.values()):
        raise TypeError("compute (not an object of partitions)")
    for p, d in v.items():
        if not all(isinstance(d.get(k, ""), str) for k in ("label", "what", "fpga_note", "board")) \
                or not isinstance(d.get("fpga") or {}, dict):
            raise TypeError(f"compute of {p}")
    return {str(p): dict(d) for p, d in v.items()}


def parse_bench(doc: Dict, label: Optional[str] = None) -> Tuple[RunInfo, List[Row], Samples]:
    """The run, its rows and its per-frame samples from one bench document.

    label overrides the document's; the default is the document's label, else its model name, else the plan
    hash. A document with "complete": false must say why in "error"; its reports may be partial or absent.
    """
    if not isinstance(doc, dict):
        raise HistoryError("bench JSON must be an object: write it with `splitrack bench --json`")
    try:
        complete = doc.get("complete", True)
        if not isinstance(complete, bool):
            raise TypeError("complete")
        error = str(doc.get("error") or "")
        if not complete and not error:
            raise HistoryError("an incomplete bench JSON (\"complete\": false) must say why in \"error\"")
        base = dict(time=str(doc["time"]), rack=str(doc["rack"]), machine=str(doc["machine"]),
                    commit_id=str(doc["commit"]), plan_hash=str(doc["plan_hash"]), source="bench")
        datetime.fromisoformat(base["time"])
        model = str(doc.get("model") or "")
        run = RunInfo(**{k: v for k, v in base.items()}, label=str(label or doc.get("label") or model or base["plan_hash"]),
                      model=model, complete=complete, error=error, splitrack=str(doc.get("splitrack") or ""),
                      env={k: doc[k] for k in ("boards", "placement", "clocks", "data", "frames", "payload_bytes", "plan",
                                               "frames_received", "host", "tuning", "controls_errors") if k in doc})
        if doc.get("compute") is not None:  # older documents have no "compute": what each board's compute was
            run.env["compute"] = _compute_field(doc["compute"])
        rows, samples = [], {}
        reports = doc.get("reports") if not complete else doc["reports"]
        for mode, rep in (reports or {}).items():
            run.hops[mode] = [str(h) for h in rep["hops"]]
            for hop, st in rep["stats"].items():
                for k in STAT_KEYS:
                    rows.append(Row(metric=f"{mode} {k}", hop=hop, value=float(st[k]), unit="us", **base))
            for hop, v in rep["breakdown_p50_us"].items():
                rows.append(Row(metric=f"{mode} breakdown p50", hop=hop, value=float(v), unit="us", **base))
            if rep.get("throughput_hz") is not None:
                rows.append(Row(metric=f"{mode} throughput", hop="e2e", value=float(rep["throughput_hz"]),
                                unit="frames/s", **base))
            sm = rep.get("samples_us") or {}
            if sm:
                samples[(mode, "e2e", "e2e")] = _floats(sm["e2e"])
                for kind in ("hops", "critical"):
                    for hop, v in sm[kind].items():
                        samples[(mode, kind.rstrip("s") if kind == "hops" else kind, hop)] = _floats(v)
                for (m2, kind, hop), v in list(samples.items()):  # the floor: what a hop takes undisturbed
                    if m2 == mode and kind in ("hop", "e2e") and len(v):
                        rows.append(Row(metric=f"{mode} min", hop=hop, value=float(np.min(v)), unit="us", **base))
                mean_parts = {h: float(np.mean(samples[(mode, "critical", h)])) for h in run.hops[mode]
                              if (mode, "critical", h) in samples}
                for hop, v in mean_parts.items():
                    rows.append(Row(metric=f"{mode} breakdown mean", hop=hop, value=v, unit="us", **base))
        for name, st in (doc.get("cpu") or {}).items():
            for k in ("p50", "p99"):
                if k in st:
                    rows.append(Row(metric=f"cpu {k}", hop=name, value=float(st[k]), unit="us", **base))
        for name, acc in (doc.get("accuracy") or {}).items():
            if acc is not None:
                rows.append(Row(metric="accuracy", hop=name, value=float(acc), unit="fraction", **base))
        rows += control_rows(doc.get("controls"), base) + host_rows(doc.get("host"), base)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HistoryError(f"bench JSON is missing or mangles field {e}: write it with `splitrack bench --json`") from None
    if samples and any(len({len(v) for (m2, _, _), v in samples.items() if m2 == m}) != 1 for m in run.hops):
        raise HistoryError("bench JSON: the per-frame samples of one mode differ in length: the file is damaged")
    errors = link_errors(doc)
    _mark_untrusted(run, doc.get("untrusted"), samples, link_allowances(errors))
    # a link whose clocks were known to within milliseconds only (a burst of slow probes on a busy machine) is
    # what was measured, within that error: kept in the samples and named, left out of the figures trends
    # are judged on (its p50 may be off by its error; the run's e2e and board times use one clock each)
    hops = {r.hop for r in rows}
    wide = {link: e for link, e in errors.items() if e > LINK_JUDGED_US and link in hops}
    if wide:
        run.env["links_not_judged"] = {link: f"clock error +-{e:.0f} us" for link, e in sorted(wide.items())}
    # NaN (e.g. throughput of one frame) is no measurement
    return run, [r for r in rows if r.value == r.value and r.hop not in wide], samples


CONTROL_KEYS = ("p50", "p99")


def control_rows(controls, base: Dict) -> List[Row]:
    """Rows "control p50" / "control p99" per control (harness.measure.controls: {name: stats in us}) of a
    document; none for an older document without controls. Raises TypeError / ValueError for a mangled one."""
    if controls is None:
        return []
    if not isinstance(controls, dict):
        raise TypeError("controls")
    return [Row(metric=f"control {k}", hop=str(name), value=float(st[k]), unit="us", **base)
            for name, st in controls.items() for k in CONTROL_KEYS if k in st]


def host_rows(host, base: Dict) -> List[Row]:
    """Rows "host load" (CPUs kept busy during the run by other processes, and by all) of a document's host
    figures (harness.measure.controls.HostLoad); none when it has none."""
    if not isinstance(host, dict):
        return []
    return [Row(metric="host load", hop=hop, value=float(host[k]), unit="CPUs", **base)
            for k, hop in (("other_cpus", "other cpus"), ("busy_cpus", "busy cpus")) if host.get(k) is not None]


def _floats(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 1 or not np.isfinite(a).all():
        raise ValueError("samples_us")
    return a


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


Parsed = Tuple[RunInfo, List[Row], Samples]


def parse_run(doc: Dict, label: Optional[str] = None) -> Parsed:
    """The run of a `splitrack run` run.json: end-to-end latency (figures and per-frame samples, mode "run"),
    throughput, accuracy on its data, and each partition's dwell."""
    try:
        s = doc["summary"]
        where = str(s["where"])
        # the rack's name (newer run.json files say it; older ones only "where", e.g. "rack rack.toml")
        rack = s.get("rack") or (where[len("rack "):] if where.startswith("rack ") else where)
        base = dict(time=str(s["time"]), rack=str(rack), machine=str(s["machine"]), commit_id=str(s["commit"]),
                    plan_hash=str(s["plan"]), source="run")
        datetime.fromisoformat(base["time"])
        complete = s.get("complete", True)
        run = RunInfo(**base, label=str(label or s.get("label") or s.get("model") or base["plan_hash"]),
                      model=str(s.get("model") or ""), complete=bool(complete), error=str(s.get("error") or ""),
                      splitrack=str(s.get("splitrack") or ""),
                      env={"data": {"source": s.get("data"), "frames": s.get("frames"),
                                    "labelled": s.get("frames") if "accuracy" in s else None, "note": ""},
                           "placement": {p: d["board"] for p, d in s.get("partitions", {}).items()},
                           **{k: s[k] for k in ("host", "tuning", "controls_errors") if k in s}})
        compute = {p: d["compute"] for p, d in s.get("partitions", {}).items() if d.get("compute") is not None}
        if compute:  # older run.json files have none
            run.env["compute"] = _compute_field(compute)
        rows = [Row(metric=f"run {k}", hop="e2e", value=float(v), unit="us", **base) for k, v in s["latency_us"].items()]
        rows.append(Row(metric="run throughput", hop="e2e", value=float(s["throughput_fps"]), unit="frames/s", **base))
        if s.get("accuracy") is not None:
            rows.append(Row(metric="accuracy", hop="rack", value=float(s["accuracy"]), unit="fraction", **base))
        for p, d in s.get("partitions", {}).items():
            rows.append(Row(metric="run dwell p50", hop=f"board {p}", value=float(d["dwell_us"]["p50"]), unit="us", **base))
        rows += control_rows(s.get("controls"), base) + host_rows(s.get("host"), base)
        e2e = _floats([(f["t_recv"] - f["t_send"]) / 1e3 for f in doc.get("frames", [])])
        if len(e2e):
            rows.append(Row(metric="run min", hop="e2e", value=float(np.min(e2e)), unit="us", **base))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HistoryError(f"run JSON is missing or mangles field {e}: write it with `splitrack run`") from None
    samples = {("run", "e2e", "e2e"): e2e} if len(e2e) else {}
    _mark_untrusted(run, s.get("untrusted"), samples)
    return run, [r for r in rows if r.value == r.value], samples


LINK_SLACK_US = 1000.0  # a link may come out below zero by the clock mapping's error: by this much at least
LINK_ERROR_CAP_US = 5000.0  # ... and by the error bounds the file states, up to this (wider bounds judge nothing)
STAMP_SLACK_US = 100.0  # beyond the bounds: timer granularity and rounding (measure/plausibility.SLACK_NS)
LINK_JUDGED_US = 500.0  # a link whose ends' clocks are known to within this together is judged for trends


def link_errors(doc: Dict) -> Dict[str, float]:
    """The clock mapping's stated error bound (us) of each link of a bench document: the sum of the bounds
    of the boards at its ends (`clocks`: board -> error_ns; `placement`: partition -> board; the host's own
    clock has none). A bound that is not a finite non-negative number counts as none stated (0)."""
    clocks, placement = doc.get("clocks"), doc.get("placement")
    if not isinstance(clocks, dict) or not isinstance(placement, dict):
        return {}

    def err_us(part: str) -> float:
        c = clocks.get(placement.get(part)) if isinstance(placement.get(part), str) else None
        e = c.get("error_ns") if isinstance(c, dict) else None
        ok = isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e < float("inf")
        return float(e) / 1e3 if ok else 0.0

    return {f"link {a}->{b}": err_us(a) + err_us(b)
            for part in placement for other in list(placement) + ["host"] for a, b in ((part, other), (other, part))}


def link_allowances(errors: Dict[str, float]) -> Dict[str, float]:
    """How far below zero each link may come out (us): its stated error (link_errors) plus STAMP_SLACK_US,
    at least LINK_SLACK_US, at most LINK_ERROR_CAP_US."""
    return {link: min(LINK_ERROR_CAP_US, max(LINK_SLACK_US, e + STAMP_SLACK_US)) for link, e in errors.items()}


def implausible(samples: Samples, allowances: Optional[Dict[str, float]] = None) -> str:
    """'' when every per-frame time could be a measurement, else why not: an end-to-end time (one host clock)
    at or below zero, a time within one board (one board clock) below zero, or a link further below zero
    than the clock mapping's stated error allows (`allowances`: link -> us, link_allowances; LINK_SLACK_US
    for a link it does not name). The bench and run that made the file check the stamps themselves, with the
    clock mapping's error; this is the history's own check of what it is handed."""
    for (mode, _, hop), v in samples.items():
        low = float(np.min(v)) if len(v) else 0.0
        if hop == "e2e" and low <= 0:
            return f"{mode} end-to-end time of {low:.1f} us"
        if hop.startswith("board ") and low < 0:
            return f"{mode} {hop} time of {low:.1f} us"
        allowed = (allowances or {}).get(hop, LINK_SLACK_US)
        if hop.startswith("link ") and low < -allowed:
            return f"{mode} {hop} time of {low:.1f} us (the clocks' stated error allows -{allowed:.0f} us)"
    return ""


def _mark_untrusted(run: RunInfo, said, samples: Samples, allowances: Optional[Dict[str, float]] = None) -> None:
    """A run whose file says it is untrusted, or whose samples are implausible (`allowances`: implausible's),
    is stored incomplete with the reason ('untrusted: ...'): shown, never used to judge a trend, never taken
    for a good run."""
    why = (str(said) if said else "") or implausible(samples, allowances)
    if why:
        why = why if why.startswith("untrusted") else f"untrusted: {why}"
        run.error = why + (f"; {run.error}" if run.error and run.error not in why and why not in run.error else "")
        run.complete = False


def runs_from_pytest_benchmark(doc: Dict, rack: Optional[str] = None, label: Optional[str] = None) -> List[Parsed]:
    """One run per plan hash of a pytest-benchmark file (its benchmarks share time, machine and commit)."""
    rows = rows_from_pytest_benchmark(doc, rack)
    out: Dict[Tuple, Parsed] = {}
    for r in rows:
        k = (r.time, r.rack, r.machine, r.commit_id, r.plan_hash)
        if k not in out:
            out[k] = (RunInfo(*k, label=label or r.plan_hash, source="pytest-benchmark"), [], {})
        out[k][1].append(r)
    for b in doc.get("benchmarks") or []:  # what each board's compute was (older files: not recorded)
        extra = b.get("extra_info") if isinstance(b, dict) else None
        if isinstance(extra, dict) and extra.get("untrusted"):  # stamps the measurement found impossible
            for run, _, _ in out.values():
                if run.plan_hash == extra.get("plan_hash", "none"):
                    _mark_untrusted(run, extra["untrusted"], {})
        if not isinstance(extra, dict) or extra.get("compute") is None:
            continue
        try:
            compute = _compute_field(extra["compute"])
        except TypeError as e:
            raise HistoryError(f"pytest-benchmark JSON has a malformed field {e}: write it with splitrack's "
                               "benchmark_extra_info") from None
        for run, _, _ in out.values():
            if run.plan_hash == extra.get("plan_hash", "none") and run.rack == (extra.get("rack") or rack or "none"):
                run.env.setdefault("compute", compute)
    return list(out.values())


def load_file(path: Path, rack: Optional[str] = None, label: Optional[str] = None) -> List[Parsed]:
    """The runs of a `splitrack bench --json` or pytest-benchmark JSON file. Raises HistoryError."""
    path = Path(path)
    try:  # bounded, never blocking, depth-limited: a results file is untrusted input
        doc = read_json(path, str(path), error=HistoryError)
    except FileNotFoundError:
        raise HistoryError(f"{path} not found: give a file written by `splitrack bench --json` or `--benchmark-json`") from None
    if isinstance(doc, dict) and doc.get("kind") == BENCH_KIND:
        return [parse_bench(doc, label)]
    if isinstance(doc, dict) and isinstance(doc.get("summary"), dict) and doc["summary"].get("kind") == RUN_KIND:
        return [parse_run(doc, label)]
    if isinstance(doc, dict) and "benchmarks" in doc and "machine_info" in doc:
        return runs_from_pytest_benchmark(doc, rack, label)
    raise HistoryError(f"{path} is neither `splitrack bench --json`, the run.json of `splitrack run`, nor pytest-benchmark JSON")


def rows_from_file(path: Path, rack: Optional[str] = None) -> List[Row]:
    """All Rows of every run in a results file (see load_file); raises HistoryError as load_file does."""
    return [r for _, rows, _ in load_file(path, rack) for r in rows]


# --- the database ---------------------------------------------------------------------------------
class History:
    """The SQLite history file. Opening it checks that it is ours and intact, and migrates an older schema.

    Raises HistoryError for a folder, a file that is not SQLite, an SQLite file of another program (left
    untouched), a damaged file (integrity check), or a history written by a newer splitrack.
    """

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise HistoryError(f"{self.path} is a folder: give a file name for the history database")
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if not exists and not create:
            raise HistoryError(f"{self.path} does not exist: add results first with `splitrack history add FILE --db {self.path}`")
        if exists:
            with open(self.path, "rb") as f:
                if f.read(16) != SQLITE_MAGIC:
                    raise HistoryError(f"{self.path} is not a splitrack history database (not an SQLite file): give another --db")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("PRAGMA foreign_keys = ON")
            if exists:
                self._check_ours()
            self._create_or_migrate()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise HistoryError(f"{self.path} is damaged or not a splitrack history database ({e}): restore it from a "
                               "backup or give another --db") from None

    def _check_ours(self) -> None:
        bad = [" ".join(str(r[0]).split()) for r in self.db.execute("PRAGMA integrity_check(20)")]
        if bad != ["ok"]:
            self.db.close()
            raise HistoryError(f"{self.path} is damaged (SQLite integrity check: {'; '.join(bad[:3])}): restore it "
                               "from a backup, or start a new history with another --db")
        app = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not r[0].startswith("sqlite_")}  # SQLite's own (sqlite_stat1, sqlite_sequence)
        v1_cols = {f.name for f in fields(Row)}
        legacy = (app == 0 and version == 0 and "measurements" in tables
                  and {r[1] for r in self.db.execute("PRAGMA table_info(measurements)")} >= v1_cols
                  and tables <= {"measurements"})
        if app == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                self.db.close()
                raise HistoryError(f"{self.path} was written by a newer splitrack (history schema {version}, this one "
                                   f"reads up to {SCHEMA_VERSION}): upgrade splitrack")
        elif not (legacy or (app == 0 and not tables)):
            self.db.close()
            raise HistoryError(f"{self.path} is an SQLite database of another program (tables: "
                               f"{', '.join(sorted(tables)) or 'none'}), not a splitrack history: give another --db "
                               "(the file was not changed)")

    def _create_or_migrate(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        # BEGIN IMMEDIATE takes the write lock before the version is read again: of two processes creating
        # (or migrating) one file at once, the second waits, then finds the schema made and does nothing
        # (a plain BEGIN let both read version 0 and the second fail on the first's tables)
        old, self.db.isolation_level = self.db.isolation_level, None
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    for stmt in _statements(self._migration(version)):
                        self.db.execute(stmt)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")  # DDL is transactional in SQLite: the file stays as it was
                raise
        finally:
            self.db.isolation_level = old

    @staticmethod
    def _migration(version: int) -> str:
        """The SQL that takes a history of schema `version` (0: a new file) to SCHEMA_VERSION."""
        script = ""
        if version < 2:  # a new file or a version-1 history (measurements without run ids)
            script += (
                SCHEMA_V1 + SCHEMA_V2 +
                "ALTER TABLE measurements ADD COLUMN run_id INTEGER REFERENCES runs(run_id);"
                # a version-1 history: one run per (time, rack, machine, commit, plan), labelled by its plan hash
                "INSERT OR IGNORE INTO runs (time, rack, machine, commit_id, plan_hash, label, model, source, "
                "complete, error, env, hops) SELECT time, rack, machine, commit_id, plan_hash, plan_hash, '', "
                "MIN(source), 1, '', '{}', '{}' FROM measurements GROUP BY time, rack, machine, commit_id, plan_hash;"
                "UPDATE measurements SET run_id = (SELECT r.run_id FROM runs r WHERE r.time = measurements.time AND "
                "r.rack = measurements.rack AND r.machine = measurements.machine AND r.commit_id = "
                "measurements.commit_id AND r.plan_hash = measurements.plan_hash);"
                "CREATE INDEX IF NOT EXISTS by_run ON measurements (run_id);")
        if version < 3:  # version 3: splitrack's version per run; controls are measurements like any other
            script += ("ALTER TABLE runs ADD COLUMN splitrack TEXT NOT NULL DEFAULT '';"
                       "CREATE INDEX IF NOT EXISTS by_series ON runs (label, model, rack);")
        return script + f"PRAGMA application_id = {APPLICATION_ID};PRAGMA user_version = {SCHEMA_VERSION};"

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ---
    def add_run(self, run: RunInfo, rows: Iterable[Row], samples: Optional[Samples] = None) -> Tuple[int, int]:
        """Insert one run (kept once: the same run added twice adds nothing). Returns (run id, new rows)."""
        rows = list(rows)
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO runs (time, rack, machine, commit_id, plan_hash, label, model, source, complete, "
                "error, env, hops, splitrack) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.time, run.rack, run.machine, run.commit_id, run.plan_hash, run.label, run.model, run.source,
                 int(run.complete), run.error, json.dumps(run.env, default=_json_default), json.dumps(run.hops),
                 run.splitrack))
            new_run = cur.rowcount == 1
            run.run_id = self.db.execute(
                "SELECT run_id FROM runs WHERE time=? AND rack=? AND machine=? AND commit_id=? AND plan_hash=?",
                (run.time, run.rack, run.machine, run.commit_id, run.plan_hash)).fetchone()[0]
            cols = ", ".join(f.name for f in fields(Row))
            before = self.db.total_changes
            self.db.executemany(f"INSERT OR IGNORE INTO measurements ({cols}, run_id) VALUES ({', '.join('?' * 11)})",
                                [astuple(r) + (run.run_id,) for r in rows])
            added = self.db.total_changes - before
            if new_run:
                self.db.executemany(
                    "INSERT OR IGNORE INTO samples (run_id, mode, kind, hop, n, data) VALUES (?,?,?,?,?,?)",
                    [(run.run_id, m, k, h, len(v), zlib.compress(np.asarray(v, "<f4").tobytes()))
                     for (m, k, h), v in (samples or {}).items()])
        return run.run_id, added

    def add(self, rows: Iterable[Row]) -> int:
        """Insert bare rows (one run per time, rack, machine, commit and plan, labelled by the plan hash).
        Returns how many rows were new."""
        groups: Dict[Tuple, List[Row]] = {}
        for r in rows:
            groups.setdefault((r.time, r.rack, r.machine, r.commit_id, r.plan_hash), []).append(r)
        return sum(self.add_run(RunInfo(*k, label=k[4], source=g[0].source), g)[1] for k, g in groups.items())

    def ack(self, run_id: int, why: str) -> RunInfo:
        """Record (or replace) an acknowledgement `why` of run `run_id`, stamped now; returns that run.
        Raises HistoryError when there is no such run."""
        run = self.run(run_id)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO acks (run_id, why, time) VALUES (?,?,?)", (run_id, why, now_iso()))
        return run

    # --- reading ---
    def run_infos(self, where: str = "1", args: Sequence = ()) -> List[RunInfo]:
        """Runs, oldest first."""
        out = []
        for r in self.db.execute(
                "SELECT run_id, time, rack, machine, commit_id, plan_hash, label, model, source, complete, error, env, hops, "
                f"splitrack FROM runs WHERE {where} ORDER BY time, run_id", args):
            out.append(RunInfo(time=r[1], rack=r[2], machine=r[3], commit_id=r[4], plan_hash=r[5], label=r[6],
                               model=r[7], source=r[8], complete=bool(r[9]), error=r[10], env=json.loads(r[11]),
                               hops=json.loads(r[12]), run_id=r[0], splitrack=r[13]))
        return out

    def run(self, run_id: int) -> RunInfo:
        """The RunInfo of run `run_id`; raises HistoryError when there is none."""
        found = self.run_infos("run_id = ?", (int(run_id),))
        if not found:
            raise HistoryError(f"no run {run_id} in {self.path}: see `splitrack history list --db {self.path}`")
        return found[0]

    def acks(self) -> Dict[int, str]:
        """run id -> why, for every acknowledged run."""
        return dict(self.db.execute("SELECT run_id, why FROM acks"))

    def samples(self, run_id: int) -> Samples:
        """The per-frame samples of one run: (mode, kind, hop) -> float64 array (frames,) in us; empty when the
        run has none. Raises HistoryError when a stored array does not have its recorded length."""
        out = {}
        for m, k, h, n, data in self.db.execute("SELECT mode, kind, hop, n, data FROM samples WHERE run_id = ?", (run_id,)):
            v = np.frombuffer(zlib.decompress(data), "<f4").astype(np.float64)
            if v.size != n:
                raise HistoryError(f"{self.path}: samples of run {run_id} ({m} {h}) are damaged: restore from a backup")
            out[(m, k, h)] = v
        return out

    def runs(self) -> List[Tuple[str, str, str, str, str, int]]:
        """(time, rack, machine, commit, plan hash, rows) per run, oldest first."""
        return self.db.execute(
            "SELECT r.time, r.rack, r.machine, r.commit_id, r.plan_hash, COUNT(m.value) FROM runs r LEFT JOIN "
            "measurements m ON m.run_id = r.run_id GROUP BY r.run_id ORDER BY r.time, r.run_id").fetchall()

    def keys(self, metric_like: str = "%") -> List[SeriesKey]:
        """The distinct (series, metric, hop) whose metric matches the SQL LIKE pattern `metric_like`, ordered by
        label, model, rack, metric, hop."""
        return [SeriesKey(*r) for r in self.db.execute(
            "SELECT DISTINCT r.label, r.model, r.rack, m.metric, m.hop FROM measurements m JOIN runs r "
            "ON m.run_id = r.run_id WHERE m.metric LIKE ? ORDER BY r.label, r.model, r.rack, m.metric, m.hop",
            (metric_like,))]

    def series(self, key: SeriesKey, complete_only: bool = False) -> List[Point]:
        """One metric of one hop over the runs of its series (label, model, rack), oldest first."""
        return [Point(*r) for r in self.db.execute(
            "SELECT m.time, m.commit_id, m.value, m.unit, m.run_id FROM measurements m JOIN runs r ON m.run_id = r.run_id "
            "WHERE r.label=? AND r.model=? AND r.rack=? AND m.metric=? AND m.hop=? AND (? = 0 OR r.complete = 1) "
            "ORDER BY r.time, r.run_id",
            (key.label, key.model, key.rack, key.metric, key.hop, int(complete_only)))]

    def rows(self, where: str = "1", args: Sequence = ()) -> List[Row]:
        """Measurement Rows matching the SQL condition `where` (with `args`), oldest first."""
        return [Row(*r) for r in self.db.execute(
            f"SELECT {', '.join(f.name for f in fields(Row))} FROM measurements WHERE {where} ORDER BY time", args)]

    def values(self, run_id: int) -> Dict[Tuple[str, str], float]:
        """(metric, hop) -> value of one run."""
        return {(m, h): v for m, h, v in self.db.execute(
            "SELECT metric, hop, value FROM measurements WHERE run_id = ?", (run_id,))}


def _statements(script: str) -> List[str]:
    """The statements of an SQL script of this module (`--` comments dropped, split at `;`)."""
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [st.strip() for st in text.split(";") if st.strip()]


def run_controls(values: Dict[Tuple[str, str], float]) -> Dict[str, float]:
    """A run's controls' p50 (us) by name, from History.values: the CPU reference as 'cpu NAME', then the controls
    of harness.measure.controls by their names."""
    out = {f"cpu {hop}": v for (m, hop), v in sorted(values.items()) if m == "cpu p50"}
    out.update({hop: v for (m, hop), v in sorted(values.items()) if m == "control p50"})
    return out


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
