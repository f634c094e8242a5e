"""Regression detection on the history: change points (ruptures' PELT) in each metric's series.

A series (one metric of one hop, on one rack, machine and plan) is standardised with a robust noise
estimate (run-to-run differences with the largest tenth dropped, so that a step does not inflate it),
then PELT with a least-squares cost finds the change points; the penalty grows with log(n) like BIC, so
a longer history does not raise more false alarms. A lone point between two change points is an outlier
run, not a change; a change needs 3 runs before it and a size of 5 % to count. A change is reported
with the run where it starts, the medians before and after, and whether it made things worse (latency
up, throughput or accuracy down).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import ruptures as rpt
from scipy.stats import norm as _norm

from .history import History, Point, RunInfo, SeriesKey

HIGHER_IS_BETTER_UNITS = ("frames/s", "fraction")
# what nightly watches by default: medians are stable enough to alert on; tails go on the dashboard
WATCH = ("single p50", "stream p50", "stream throughput", "single breakdown p50", "accuracy", "run p50")


@dataclass(frozen=True)
class Change:
    """A change point in one series (SeriesKey): the medians before and from run `index` on, in the series'
    unit, and whether the change is a regression (slower / worse) or an improvement."""

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

    @property
    def relative(self) -> float:
        """(after - before) / |before|; +inf when before is 0."""
        return (self.after - self.before) / abs(self.before) if self.before else math.inf

    def describe(self, run: Optional[RunInfo] = None) -> str:
        """One line: what moved, where, by how much, since which run and commit, in which series.

        run: the run where the change starts, for its label, model and the board behind the hop."""
        what = "REGRESSION" if self.regression else "improvement"
        since = f"run {self.run_id}" if self.run_id else f"run #{self.index} of the series"
        where = self.key.hop
        if run is not None and run.board_of(self.key.hop):
            size = (run.env.get("payload_bytes") or {}).get(self.key.hop)
            where += f" (board {run.board_of(self.key.hop)}" + (f", {size} B per frame)" if size else ")")
        series = f"rack {self.key.rack}, plan {self.key.plan_hash}"
        if run is not None:
            series = f"label {run.label!r}, model {run.model or '?'}, " + series
        elif self.key.label:
            series = f"label {self.key.label!r}, " + series
        return (f"{what}: {self.key.metric} at {where}: {self.before:.4g} -> {self.after:.4g} {self.unit} "
                f"({self.after - self.before:+.4g} {self.unit}, {self.relative:+.1%}) since {since} ({self.time}, "
                f"commit {self.commit_id}) [{series}]")

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


def change_points(x: Sequence[float], penalty: float = 3.0) -> List[int]:
    """Indices where a new segment starts (PELT, l2 cost on the standardised series)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 3:
        return []
    sigma = noise_sigma(x)
    # a perfectly flat stretch gives sigma 0; the floor keeps tiny float noise from becoming changes
    floor = 1e-3 * max(abs(float(np.median(x))), 1e-12)
    z = (x - np.median(x)) / max(sigma, floor)
    bkps = rpt.Pelt(model="l2", min_size=1, jump=1).fit(z.reshape(-1, 1)).predict(pen=penalty * 2 * math.log(n))
    cps = [b for b in bkps if b < n]
    # a single run between two change points is an outlier, not two changes
    out: List[int] = []
    i = 0
    while i < len(cps):
        if i + 1 < len(cps) and cps[i + 1] - cps[i] == 1:
            i += 2
            continue
        out.append(cps[i])
        i += 1
    return out


MIN_BEFORE = 3  # runs needed before a change: with fewer there is no level to compare against


def detect_series(key: SeriesKey, points: Sequence[Point], penalty: float = 3.0, min_relative: float = 0.05,
                  min_before: int = MIN_BEFORE) -> List[Change]:
    """Changes of at least `min_relative` (of the level before), after at least `min_before` runs."""
    x = np.array([p.value for p in points], dtype=np.float64)
    cps = change_points(x, penalty)
    bounds = [0] + cps + [len(x)]
    changes = []
    for j, cp in enumerate(cps):
        before = float(np.median(x[bounds[j]:cp]))
        after = float(np.median(x[cp:bounds[j + 2]]))
        if cp < min_before or abs(after - before) < min_relative * abs(before):
            continue  # too early to tell, or real but too small to matter
        unit = points[cp].unit
        worse = after < before if unit in HIGHER_IS_BETTER_UNITS else after > before
        changes.append(Change(key, cp, points[cp].time, points[cp].commit_id, before, after, unit, worse,
                              latest=(j == len(cps) - 1), run_id=points[cp].run_id))
    return changes


def detect(history: History, metrics: Optional[Sequence[str]] = None, penalty: float = 3.0,
           min_relative: float = 0.05) -> List[Change]:
    """Every change in every series (of the given metrics; all when None); incomplete runs are left out."""
    out = []
    for key in history.keys():
        if metrics is not None and key.metric not in metrics:
            continue
        out.extend(detect_series(key, history.series(key, complete_only=True), penalty, min_relative))
    return out


def live_regressions(changes: Sequence[Change], acked: Sequence[int] = ()) -> List[Change]:
    """Regressions still in effect at the newest run, less those acknowledged (`history ack`): what fails."""
    return [c for c in changes if c.regression and c.latest and c.run_id not in set(acked)]


@dataclass
class Check:
    """What `history check` found: per series group (label, rack, machine, plan) whether it could judge."""

    changes: List[Change]
    live: List[Change]  # regressions in effect, not acknowledged
    acked: List[Change]  # regressions in effect that a user acknowledged
    judged: List[Tuple[str, str, str, str, int]]  # (label, rack, machine, plan, complete runs)
    unjudged: List[Tuple[str, str, str, str, int]]  # too few runs yet

    def report(self, runs: Dict[int, RunInfo], acks: Dict[int, str]) -> List[str]:
        """The `history check` report as lines: series not judged yet (too few runs), each change (marked
        acknowledged when a user acked it), and a summary count."""
        out = []
        for label, rack, machine, plan, n in self.unjudged:
            out.append(f"cannot judge {label!r} (rack {rack}, machine {machine}, plan {plan}) yet: needs at least "
                       f"{MIN_BEFORE} earlier runs of this series, has {max(n - 1, 0)}")
        for c in self.changes:
            if c.regression and c.latest and c.run_id in acks:
                out.append(f"acknowledged ({acks[c.run_id]}): " + c.describe(runs.get(c.run_id)))
            else:
                out.append(c.describe(runs.get(c.run_id)))
        out.append(f"{len(self.judged)} series judged, {len(self.unjudged)} not yet; {len(self.changes)} change(s), "
                   f"{len(self.live)} regression(s) in effect" + (f", {len(self.acked)} acknowledged" if self.acked else ""))
        return out


def check(history: History, metrics: Optional[Sequence[str]] = WATCH, min_relative: float = 0.05,
          penalty: float = 3.0) -> Check:
    """Change points of every judged series; a series with fewer than MIN_BEFORE + 1 complete runs is not judged."""
    counts: Dict[Tuple[str, str, str, str], int] = {}
    for r in history.run_infos("complete = 1"):
        k = (r.label, r.rack, r.machine, r.plan_hash)
        counts[k] = counts.get(k, 0) + 1
    judged = [k + (n,) for k, n in counts.items() if n - 1 >= MIN_BEFORE]
    unjudged = [k + (n,) for k, n in counts.items() if n - 1 < MIN_BEFORE]
    ok = {k[:4] for k in judged}
    changes = [c for c in detect(history, metrics, penalty, min_relative)
               if (c.key.label, c.key.rack, c.key.machine, c.key.plan_hash) in ok]
    acks = history.acks()
    live = live_regressions(changes, list(acks))
    acked = [c for c in live_regressions(changes) if c.run_id in acks]
    return Check(changes, live, acked, judged, unjudged)
