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
from typing import Dict, List, Optional, Sequence

import numpy as np
import ruptures as rpt
from scipy.stats import norm as _norm

from harness.results.history import History, Point, SeriesKey

HIGHER_IS_BETTER_UNITS = ("frames/s", "fraction")
# what nightly watches by default: medians are stable enough to alert on; tails go on the dashboard
WATCH = ("single p50", "stream p50", "stream throughput", "single breakdown p50", "accuracy")


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

    @property
    def relative(self) -> float:
        """(after - before) / |before|; +inf when before is 0."""
        return (self.after - self.before) / abs(self.before) if self.before else math.inf

    def describe(self) -> str:
        """One line for people: what changed, where, by how much, since which run and commit."""
        what = "REGRESSION" if self.regression else "improvement"
        return (f"{what}: {self.key.metric} at {self.key.hop}: {self.before:.4g} -> {self.after:.4g} {self.unit} "
                f"({self.relative:+.1%}) since run {self.index} ({self.time}, commit {self.commit_id})"
                f" [rack {self.key.rack}, plan {self.key.plan_hash}]")

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
                              latest=(j == len(cps) - 1)))
    return changes


def detect(history: History, metrics: Optional[Sequence[str]] = None, penalty: float = 3.0,
           min_relative: float = 0.05) -> List[Change]:
    """Every change in every series (of the given metrics; all when None)."""
    out = []
    for key in history.keys():
        if metrics is not None and key.metric not in metrics:
            continue
        out.extend(detect_series(key, history.series(key), penalty, min_relative))
    return out


def live_regressions(changes: Sequence[Change]) -> List[Change]:
    """Regressions still in effect at the newest run: what a nightly job fails on."""
    return [c for c in changes if c.regression and c.latest]
