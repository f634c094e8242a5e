"""Regression detection on the history: change points in each watched figure of a series, judged against the
controls measured in the same runs.

1. Change points. A figure's series (one metric of one hop over the complete runs of a series: label, model,
   rack) is taken on a log scale (latency and throughput are ratios; accuracy as it is), standardised with a
   robust noise estimate (run-to-run differences with the largest tenth dropped, so that a step does not
   inflate it), and ruptures' PELT with a least-squares cost finds the change points; the penalty grows with
   log(n) like BIC, so a longer history does not raise more alarms. A lone run between two change points is
   an outlier run when the level after it returns, and the first run of a change when it does not. A change
   needs MIN_BEFORE runs before it and a size of `min_relative` (5 %) to count, and MIN_AFTER runs showing it
   to be raised: one slow run alone is an outlier until the next run confirms it (it is listed as unconfirmed
   meanwhile).
2. The machine. Every run carries controls (harness.measure.controls: loopback echo, a CPU loop, each board's
   probe, the host's load; the Keras CPU reference of bench). A change at the run where a control moved the
   same way (beyond three times its own noise and by `min_relative`) is the machine's, not the plan's: it is
   reported as "the machine/host was slower (control X moved by Y)" and fails nothing, unless the figure is
   shown not to follow the machine: a control varied within the segments by SPREAD or more (the load really
   changed) and a least-squares fit of the figure on it, with a level per segment, has a slope below
   INSENSITIVE at two standard errors.
3. Work or waiting. A board's floor in the stream (its fastest frame of the run, "stream min") is the work: what
   it takes when nothing gets in the way; a slower board moves it, a busier machine hardly does. A p50 (or the
   stream's throughput) that moved while the same hop's floor in the stream (the end to end's) did not, by
   `min_relative` and beyond the floor's own noise, is frames waiting longer, as on a busier machine: the
   machine's too. The floor moved only if most runs after the change show it (of two runs, both).
4. Watched figures (WATCH, on the hops `watched` names): the floors of the boards in the stream, the p50 of
   every hop and the end to end, the stream's throughput, accuracy. The regressions of one hop at one run are
   one alarm (`Alarm`), whichever figures show it.

Measured on a virtual rack whose load changes between runs (benchmarks/regression_detector.py): the figures
are in docs/measurements.md (the regression check: false alarms and detection).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import ruptures as rpt
from scipy.stats import norm as _norm

from . import series as series_mod
from .history import History, Point, RunInfo, SeriesKey
from .series import Event, Series

HIGHER_IS_BETTER_UNITS = ("frames/s", "fraction")
# what nightly watches by default (tails and the parts of a board's time go on the dashboard):
#   floors ("min": the work) of every board and of the end to end, the p50s (what users see) of every hop and
#   the end to end, the stream's throughput, accuracy
WATCH = ("stream min", "single p50", "stream p50", "run p50", "stream throughput", "accuracy")
# the floors watched: of every board in the stream, where a board always has a frame waiting: single frames
# find a board asleep, and its wake-up on a busier machine moves even their floor (measured: see the README)
FLOORS = ("stream min",)
WORK = "stream min"  # the floor that says whether a p50's or a throughput's work moved
CONTROL_METRICS = ("control p50", "cpu p50", "host load")  # the machine's figures that can explain a change
MIN_BEFORE = 3  # runs needed before a change: with fewer there is no level to compare against
MIN_AFTER = 2  # runs that must show a change before it is raised
INSENSITIVE = 0.25  # a figure whose fitted slope on a control stays below this (2 s.e.) does not follow the machine
SPREAD = 0.10  # ... when that control varied by this much (log scale) within the segments: the machine's load did
# A change the machine explains cannot be much larger than the machine's own move: a figure follows load by at
# most this multiple of its most-moved control (log scale). Without it, a board 29x slower was called "the
# machine/host was slower" because a board probe moved +20 % the same night (test_nightly, CI of 2026-12-06).
MACHINE_GAIN = 3.0
PRIMARY = ("p50", "throughput", "min")  # which figure of an alarm is named first


@dataclass(frozen=True)
class ControlMove:
    """A control's medians (us) over the same runs as a change: before and from the change on."""

    name: str
    before: float
    after: float

    @property
    def relative(self) -> float:
        """(after - before) / before."""
        return (self.after - self.before) / self.before if self.before else math.inf

    def describe(self) -> str:
        """e.g. "control 'loopback echo' moved by +81% (29.1 -> 52.7 us)"."""
        return f"control {self.name!r} moved by {self.relative:+.0%} ({self.before:.4g} -> {self.after:.4g} us)"


@dataclass(frozen=True)
class Change:
    """A change point in one series (SeriesKey): the medians before and from run `index` on, in the series'
    unit, and whether the change is a regression (slower / worse) or an improvement.

    machine: the controls that moved with it; when `explained`, the change is the machine's, not the plan's.
    events: what changed on the series at that run (a new plan, tuning, splitrack, machine).
    confirmed: False while only the newest run shows it (MIN_AFTER)."""

    key: SeriesKey
    index: int  # index in the series of the first run after the change
    time: str
    commit_id: str
    before: float  # median of the segment before
    after: float  # median of the segment from `index` on
    unit: str
    regression: bool  # True when the change made things worse
    latest: bool  # True when the segment after the change reaches the newest run (still in effect)
    run_id: int = 0  # the history's id of the first run after the change
    machine: Tuple[ControlMove, ...] = ()
    explained: bool = False
    events: Tuple[Event, ...] = ()
    confirmed: bool = True
    work: Optional[float] = None  # relative move of the hop's floor over the same runs (p50 and throughput)

    @property
    def relative(self) -> float:
        """(after - before) / |before|; +inf when before is 0."""
        return (self.after - self.before) / abs(self.before) if self.before else math.inf

    @property
    def counts(self) -> bool:
        """A regression of the plan still in effect and confirmed: what fails a check (unless acknowledged)."""
        return self.regression and self.latest and self.confirmed and not self.explained

    def describe(self, run: Optional[RunInfo] = None) -> str:
        """One line: what moved, where, by how much, since which run and commit, in which series; for a change
        the controls explain, which control moved by how much.

        run: the run where the change starts, for its label, model and the board behind the hop."""
        slower = "slower" if self.unit not in HIGHER_IS_BETTER_UNITS else "worse"
        if self.explained:
            what = f"the machine/host was {slower if self.regression else 'faster'}, not the plan"
        elif not self.confirmed:
            what = "possible " + ("regression" if self.regression else "improvement") + " (only the newest run shows it)"
        else:
            what = "REGRESSION" if self.regression else "improvement"
        since = f"run {self.run_id}" if self.run_id else f"run #{self.index} of the series"
        where = self.key.hop
        if run is not None and run.board_of(self.key.hop):
            size = (run.env.get("payload_bytes") or {}).get(self.key.hop)
            where += f" (board {run.board_of(self.key.hop)}" + (f", {size} B per frame)" if size else ")")
        series = f"label {self.key.label!r}, model {self.key.model or '?'}, rack {self.key.rack}"
        if run is not None:
            series += f", plan {run.plan_hash}"
        line = (f"{what}: {self.key.metric} at {where}: {_num(self.before)} -> {_num(self.after)} {self.unit} "
                f"({_num(self.after - self.before, '+')} {self.unit}, {self.relative:+.1%}) since {since} ({self.time}, "
                f"commit {self.commit_id}) [{series}]")
        if self.events:
            line += "; at that run: " + ", ".join(e.describe() for e in self.events)
        if self.machine:
            line += "; " + ", ".join(m.describe() for m in self.machine)
        if self.explained and self.work is not None and not self.machine:
            line += f"; its floor (the work) moved by {self.work:+.1%}: frames waited longer"
        return line

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready dict of the change, with `relative` and the `describe` text."""
        d = asdict(self)
        d["relative"] = self.relative
        d["text"] = self.describe()
        return d


def noise_sigma(x: np.ndarray) -> float:
    """Noise level from run-to-run differences, the largest tenth dropped (a step moves one difference only).

    The trimmed mean square is rescaled by the variance of a normal truncated at the same quantile, so
    the estimate is consistent for Gaussian noise; it is far less variable on short series than a MAD.
    """
    d = np.sort(np.abs(np.diff(np.asarray(x, dtype=np.float64))))
    if d.size == 0:
        return 0.0
    drop = max(1, int(round(0.1 * d.size))) if d.size >= 3 else 0
    kept = d[: d.size - drop]
    frac = kept.size / d.size
    q = _norm.ppf(0.5 + frac / 2)
    truncated_var = 1.0 - (2 * q * _norm.pdf(q) / frac if frac < 1 else 0.0)
    return float(math.sqrt(np.mean(kept ** 2) / truncated_var / 2))


def change_points(x: Sequence[float], penalty: float = 3.0, floor: Optional[float] = None) -> List[int]:
    """Indices where a new segment starts (PELT, l2 cost on the standardised series). `floor`: the smallest
    noise level assumed (default 1e-3 of the median's size): a flat stretch must not make float noise a change."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 3:
        return []
    sigma = noise_sigma(x)
    if floor is None:
        floor = 1e-3 * max(abs(float(np.median(x))), 1e-12)
    z = (x - np.median(x)) / max(sigma, floor)
    pen = penalty * 2 * math.log(n)
    bkps = rpt.Pelt(model="l2", min_size=1, jump=1).fit(z.reshape(-1, 1)).predict(pen=pen)
    return _lone_runs(z, [b for b in bkps if b < n], pen)


def _lone_runs(z: np.ndarray, cps: List[int], pen: float) -> List[int]:
    """Change points `cps` of the standardised series `z` with each lone run (one run between two change points)
    judged by what follows it: when the level after it is nearer the lone run's than the level before, the change
    persists and starts at the lone run (one change, confirmed by its second run); else the lone run is an
    outlier, and the runs on either side of it are one level unless they differ by a change PELT would make
    (l2 gain above `pen`): then the change starts after it. Dropping every lone run (the rule before) hid a
    slower board whose second run was slower still (321, 376 us after 270: benchmarks/out/regression_detector-3)."""
    out: List[int] = []
    i = 0
    while i < len(cps):
        if i + 1 < len(cps) and cps[i + 1] - cps[i] == 1:
            r = cps[i]
            a = cps[i - 1] if i > 0 else 0
            b = cps[i + 2] if i + 2 < len(cps) else len(z)
            before, after = z[a:r], z[r + 1:b]
            lb, la = float(np.median(before)), float(np.median(after))
            if abs(la - z[r]) < abs(la - lb):
                out.append(r)
            elif len(before) * len(after) / (len(before) + len(after)) * (before.mean() - after.mean()) ** 2 > pen:
                out.append(r + 1)
            i += 2
            continue
        out.append(cps[i])
        i += 1
    return out


Controls = Dict[str, np.ndarray]  # control name -> value per point of a series (NaN where not measured)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)


def _slope(z: np.ndarray, c: np.ndarray, bounds: List[int]) -> Tuple[float, float]:
    """Least-squares slope of z on c with one level per segment (`bounds`), and its standard error; (nan, inf)
    when it cannot be estimated (too few runs, no variation of c within segments)."""
    ok = np.isfinite(z) & np.isfinite(c)
    cols = [((np.arange(len(z)) >= a) & (np.arange(len(z)) < b)).astype(float) for a, b in zip(bounds, bounds[1:])]
    X = np.column_stack(cols + [c])[ok]
    y = z[ok]
    X = X[:, np.any(X != 0, axis=0)]
    dof = len(y) - X.shape[1]
    if dof < 2:
        return math.nan, math.inf
    coef, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    if rank < X.shape[1]:
        return math.nan, math.inf
    resid = y - X @ coef
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.pinv(X.T @ X)
    return float(coef[-1]), float(math.sqrt(max(cov[-1, -1], 0.0)))


def _moves(controls: Controls, a: int, cp: int, b: int, direction: float, min_relative: float) -> List[ControlMove]:
    """Controls that moved at `cp` (medians over [a, cp) and [cp, b)) in `direction` (+1: slower), by at least
    `min_relative` and beyond three times their own run-to-run noise (on a log scale)."""
    out = []
    for name, v in controls.items():
        lv = _log(v)
        before, after = lv[a:cp][np.isfinite(lv[a:cp])], lv[cp:b][np.isfinite(lv[cp:b])]
        if len(before) < 2 or len(after) < 1:
            continue
        d = float(np.median(after) - np.median(before))
        sigma = noise_sigma(lv[np.isfinite(lv)])
        if d * direction >= math.log1p(min_relative) and abs(d) >= 3 * sigma:
            out.append(ControlMove(name, float(np.exp(np.median(before))), float(np.exp(np.median(after)))))
    return sorted(out, key=lambda m: -abs(m.relative))


def _insensitive(z: np.ndarray, controls: Controls, bounds: List[int], worse_sign: float) -> bool:
    """Whether the figure `z` (log scale) is shown not to follow the machine: some control varied within the
    segments by SPREAD or more (the machine's load really changed, not only the control's own measurement noise)
    while the figure's fitted slope on it stays below INSENSITIVE at two standard errors."""
    for v in controls.values():
        c = _log(v)
        resid = [c[a:b][np.isfinite(c[a:b])] - np.median(c[a:b][np.isfinite(c[a:b])])
                 for a, b in zip(bounds, bounds[1:]) if np.isfinite(c[a:b]).sum() >= 2]
        if not resid or noise_sigma(np.concatenate(resid)) < SPREAD:
            continue
        beta, se = _slope(z, c, bounds)
        if math.isfinite(beta) and worse_sign * beta + 2 * se < INSENSITIVE:
            return True
    return False


def _within_machine(before: float, after: float, moves: Sequence[ControlMove]) -> bool:
    """Whether a figure's move from `before` to `after` is no more than MACHINE_GAIN times the largest of the
    controls' moves (log scale): what the machine can account for."""
    if before <= 0 or after <= 0:
        return False
    largest = max((abs(math.log1p(m.relative)) for m in moves if math.isfinite(m.relative) and m.relative > -1),
                  default=0.0)
    return abs(math.log(after / before)) <= MACHINE_GAIN * largest


def detect_series(key: SeriesKey, points: Sequence[Point], penalty: float = 3.0, min_relative: float = 0.05,
                  min_before: int = MIN_BEFORE, controls: Optional[Controls] = None,
                  events: Sequence[Event] = (), work: Optional[np.ndarray] = None) -> List[Change]:
    """Changes of at least `min_relative` (of the level before), after at least `min_before` runs, each
    judged against the `controls` of the same runs (see the module's docstring) and marked with the `events`
    at its run. `work`: for a p50 or a throughput, the floor that is its work per point (series_work): a change
    whose floor did not move the same way by `min_relative` is waiting, not work (the machine's)."""
    x = np.array([p.value for p in points], dtype=np.float64)
    unit = points[0].unit if points else ""
    ratio = unit != "fraction" and len(x) and bool(np.all(x > 0))
    z = np.log(x) if ratio else x
    # the noise floor: a figure recorded to 0.1 us (or a flat synthetic series) is not noise-free
    floor = 1e-3 if ratio else 1e-3 * max(abs(float(np.median(x))) if len(x) else 0.0, 1e-12)
    worse_sign = -1.0 if unit in HIGHER_IS_BETTER_UNITS else 1.0
    cps = change_points(z, penalty, floor)
    bounds = [0] + cps + [len(x)]
    changes = []
    for j, cp in enumerate(cps):
        a, b = bounds[j], bounds[j + 2]
        before = float(np.median(x[a:cp]))
        after = float(np.median(x[cp:b]))
        if cp < min_before or abs(after - before) < min_relative * abs(before):
            continue  # too early to tell, or real but too small to matter
        worse = after < before if unit in HIGHER_IS_BETTER_UNITS else after > before
        slower = 1.0 if (after > before) == (worse_sign > 0) else -1.0  # the machine's direction that explains it
        moves: List[ControlMove] = []
        explained = False
        if controls and ratio:
            moves = _moves(controls, a, cp, b, slower, min_relative)
            # a figure shown not to follow the machine is not explained by it, nor a move far beyond the machine's
            explained = (bool(moves) and not _insensitive(z, controls, bounds, worse_sign)
                         and _within_machine(before, after, moves))
        work_move = None
        if work is not None and ratio:
            lw = _log(np.asarray(work, dtype=np.float64))
            wb, wa = lw[a:cp][np.isfinite(lw[a:cp])], lw[cp:b][np.isfinite(lw[cp:b])]
            if len(wb) and len(wa):
                # the work moved only if most runs after show it: the median of the after-runs least in the
                # change's direction (of two runs, the smaller move), so that one outlying floor does not carry it
                # (benchmarks/out/regression_detector-4, night 6: a link's floor 42 -> 41, 208 us made a p50 that
                # idle runs slowed a regression)
                wa = np.sort(wa * slower)
                d = float(slower * wa[(len(wa) - 1) // 2] - np.median(wb))
                work_move = float(np.expm1(d))
                # the time grew (or shrank) but the work did not (by min_relative, beyond the floor's own noise):
                # frames waited longer, as on a busier machine
                if work_move * slower < min_relative or abs(d) < 3 * noise_sigma(lw[np.isfinite(lw)]):
                    explained = True
        changes.append(Change(key, cp, points[cp].time, points[cp].commit_id, before, after, unit, worse,
                              latest=(j == len(cps) - 1), run_id=points[cp].run_id, machine=tuple(moves[:3]),
                              explained=explained, confirmed=len(x) - cp >= MIN_AFTER, work=work_move,
                              events=tuple(e for e in events if e.run_id == points[cp].run_id)))
    return changes


def _aligned(history: History, key: SeriesKey, index: Dict[int, int], n: int) -> np.ndarray:
    v = np.full(n, np.nan)
    for p in history.series(key, complete_only=True):
        if p.run_id in index:
            v[index[p.run_id]] = p.value
    return v


def series_controls(history: History, key: SeriesKey, points: Sequence[Point],
                    keys: Optional[Sequence[SeriesKey]] = None) -> Controls:
    """The controls of a series (every CONTROL_METRICS hop), aligned with `points` (NaN where a run has none)."""
    index = {p.run_id: i for i, p in enumerate(points)}
    out: Controls = {}
    for ck in keys if keys is not None else history.keys("%"):
        if ck.series != key.series or ck.metric not in CONTROL_METRICS:
            continue
        name = {"control p50": ck.hop, "cpu p50": f"cpu {ck.hop}", "host load": f"host {ck.hop}"}[ck.metric]
        v = _aligned(history, ck, index, len(points))
        if np.isfinite(v).sum() >= 3:
            out[name] = v
    return out


def series_work(history: History, key: SeriesKey, points: Sequence[Point],
                keys: Sequence[SeriesKey]) -> Optional[np.ndarray]:
    """The floor that says whether a p50's or throughput's work moved, aligned with `points`: the same hop's floor
    in the stream (WORK; the end to end's for the throughput); else None."""
    index = {p.run_id: i for i, p in enumerate(points)}
    if not (key.metric.endswith(" p50") or key.metric.endswith(" throughput")):
        return None
    own = SeriesKey(*key.series, WORK, "e2e" if key.metric.endswith(" throughput") else key.hop)
    return _aligned(history, own, index, len(points)) if own in set(keys) else None


def is_control(metric: str) -> bool:
    """Whether a metric is a control (the machine's figures, never a regression of the plan)."""
    return metric.startswith("control ") or metric.startswith("cpu ") or metric == "host load"


def watched(metric: str, hop: str) -> bool:
    """Whether the default check watches a figure: floors of boards and the end to end (a link's floor crosses two
    clocks and the host's scheduler: too noisy to alarm on), p50s of every hop (not of a board's parts: queue,
    compute, out), the rest end to end or as they come."""
    main = hop == "e2e" or hop.startswith("link ") or (hop.startswith("board ") and len(hop.split(" ")) == 2)
    if metric in FLOORS:
        return main and not hop.startswith("link ")
    return main or metric == "accuracy"


def detect(history: History, metrics: Optional[Sequence[str]] = None, penalty: float = 3.0,
           min_relative: float = 0.05) -> List[Change]:
    """Every change in every series (of the given metrics, on the hops `watched` says; every figure but the
    controls when None); incomplete runs are left out."""
    out = []
    runs = series_mod.group(history.run_infos("complete = 1"))
    evs = {s: series_mod.events(rs) for s, rs in runs.items()}
    keys = history.keys()
    ctl_cache: Dict[Tuple, Controls] = {}
    for key in keys:
        if is_control(key.metric) or (metrics is not None and (key.metric not in metrics
                                                                or not watched(key.metric, key.hop))):
            continue
        points = history.series(key, complete_only=True)
        if not points:
            continue
        ck = (key.series, tuple(p.run_id for p in points))
        if ck not in ctl_cache:
            ctl_cache[ck] = series_controls(history, key, points, keys)
        out.extend(detect_series(key, points, penalty, min_relative, controls=ctl_cache[ck],
                                 events=evs.get(key.series, ()), work=series_work(history, key, points, keys)))
    return out


def live_regressions(changes: Sequence[Change], acked: Sequence[int] = ()) -> List[Change]:
    """Regressions of the plan in effect at the newest run and confirmed, less those acknowledged (`history
    ack`): what fails."""
    return [c for c in changes if c.counts and c.run_id not in set(acked)]


def _num(v: float, sign: str = "") -> str:
    """A figure with 4 significant digits and no exponent below 10^9 (10000 -> '10000', not '1e+04')."""
    return f"{v:{sign}.0f}" if 1000 <= abs(v) < 1e9 else f"{v:{sign}.4g}"


def too_few_runs(n: int) -> str:
    """Why a series of `n` complete runs is not judged yet (n < MIN_BEFORE + 1)."""
    return (f"a series is judged from its {MIN_BEFORE + 1}th complete run on (the newest against at least "
            f"{MIN_BEFORE} before it); it has {n} complete run(s) (incomplete and untrusted runs do not count)")


@dataclass
class Alarm:
    """The regressions of one hop of one series that start at one run: one entry, whichever figures show it.
    `links`: changes of the links into this board that start at the same run, the same way (frames wait in
    the link before a slower board: the link's time grows with the board's, they are one cause)."""

    changes: List[Change]
    links: List[Change] = field(default_factory=list)

    @property
    def primary(self) -> Change:
        """The figure named first: a p50 before a throughput before a p10, single frames before a stream."""
        def rank(c: Change):
            stat = c.key.metric.split(" ")[-1]
            return (PRIMARY.index(stat) if stat in PRIMARY else len(PRIMARY), c.key.metric)
        return min(self.changes, key=rank)

    def describe(self, run: Optional[RunInfo] = None) -> str:
        """The primary change's line, then the other figures' relative changes."""
        p = self.primary
        others = [c for c in self.changes if c is not p]
        return (p.describe(run) + ("; also " + ", ".join(f"{c.key.metric} {c.relative:+.1%}" for c in others)
                                   if others else "")
                + ("; with " + ", ".join(f"{c.key.hop} {c.key.metric} {c.relative:+.1%}" for c in self.links)
                   + f" (frames wait in the link before the slower {p.key.hop})" if self.links else ""))


def alarms(changes: Sequence[Change]) -> List[Alarm]:
    """Changes grouped by series, hop and starting run (in the order they come); the changes of a link into a
    board that start at the board's run, the same way, go with the board's entry (Alarm.links)."""
    out: Dict[Tuple, Alarm] = {}
    for c in changes:
        out.setdefault((c.key.series, c.key.hop, c.run_id, c.explained, c.confirmed), Alarm([])).changes.append(c)
    for key, al in list(out.items()):
        series, hop, run_id, explained, confirmed = key
        if not hop.startswith("link ") or "->" not in hop:
            continue
        board = out.get((series, "board " + hop.split("->", 1)[1], run_id, explained, confirmed))
        way = {c.regression for c in al.changes}
        if board is not None and len(way) == 1 and way == {c.regression for c in board.changes}:
            board.links.extend(al.changes)
            del out[key]
    return list(out.values())


@dataclass
class Check:
    """What `history check` found: per series (label, model, rack) whether it could judge."""

    changes: List[Change]
    live: List[Change]  # regressions in effect, confirmed, not the machine's, not acknowledged
    acked: List[Change]  # regressions in effect that a user acknowledged
    judged: List[Tuple[str, str, str, int]]  # (label, model, rack, complete runs)
    unjudged: List[Tuple[str, str, str, int]]  # too few runs yet
    events: Dict[Series, List[Event]] = field(default_factory=dict)

    @property
    def live_alarms(self) -> List[Alarm]:
        """The live regressions, one entry per hop and run."""
        return alarms(self.live)

    def report(self, runs: Dict[int, RunInfo], acks: Dict[int, str]) -> List[str]:
        """The `history check` report as lines: series not judged yet (too few runs), each change (one line per
        hop and run; marked acknowledged when a user acked it, the machine's when the controls explain it), and a
        summary count."""
        out = []
        for label, model, rack, n in self.unjudged:
            out.append(f"cannot judge {label!r} (model {model or '?'}, rack {rack}) yet: {too_few_runs(n)}")
        for al in alarms(self.changes):
            c = al.primary
            line = al.describe(runs.get(c.run_id))
            if c.counts and c.run_id in acks:
                line = f"acknowledged ({acks[c.run_id]}): " + line
            out.append(line)
        machine = {(c.key.series, c.run_id) for c in self.changes if c.explained and c.latest}
        out.append(f"{len(self.judged)} series judged, {len(self.unjudged)} not yet; {len(alarms(self.changes))} "
                   f"change(s), {len(self.live_alarms)} regression(s) in effect"
                   + (f", {len(alarms(self.acked))} acknowledged" if self.acked else "")
                   + (f"; {len(machine)} run(s) where the machine, not the plan, changed" if machine else ""))
        return out


def check(history: History, metrics: Optional[Sequence[str]] = WATCH, min_relative: float = 0.05,
          penalty: float = 3.0) -> Check:
    """Change points of every judged series; a series with fewer than MIN_BEFORE + 1 complete runs is not judged."""
    runs = series_mod.group(history.run_infos("complete = 1"))
    judged = [s + (len(rs),) for s, rs in runs.items() if len(rs) - 1 >= MIN_BEFORE]
    unjudged = [s + (len(rs),) for s, rs in runs.items() if len(rs) - 1 < MIN_BEFORE]
    ok = {k[:3] for k in judged}
    changes = [c for c in detect(history, metrics, penalty, min_relative) if c.key.series in ok]
    acks = history.acks()
    live = live_regressions(changes, list(acks))
    acked = [c for c in live_regressions(changes) if c.run_id in acks]
    return Check(changes, live, acked, judged, unjudged, {s: series_mod.events(rs) for s, rs in runs.items()})
