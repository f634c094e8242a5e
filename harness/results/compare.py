"""A/B comparison of two runs of the history, hop by hop, on their per-frame samples.

For each mode (single, stream), each hop in critical-path order and the end to end: p50 and p99 of both
runs, the change of the p50 in %, and a two-sided Mann-Whitney U test (scipy.stats.mannwhitneyu) on the
two sets of per-frame times. Many hops are tested at once, so the p-values are Bonferroni-adjusted (times
the number of tests). A change counts as significant when its adjusted p-value is below `alpha` AND the
p50 moved by at least `threshold`: with thousands of frames a test finds even a 0.5 % shift, which is
real but nothing to act on. Runs without samples (pytest-benchmark imports, old histories) show their
figures with "no samples" and are never flagged.

    splitrack history compare previous latest [--threshold 0.05] [--alpha 0.01] [--json]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.stats import mannwhitneyu

from harness.results.history import History, HistoryError, RunInfo, run_controls

MACHINE_MOVE = 0.10  # a control that moved by this much between A and B: the machine differed


@dataclass
class HopChange:
    """One hop (or "e2e") of one mode in both runs; times in us."""

    mode: str
    hop: str
    position: Optional[int]  # place on the critical path (0 = first hop); None for e2e
    n_a: int
    n_b: int
    p50_a: float
    p50_b: float
    p99_a: float
    p99_b: float
    p_value: Optional[float]  # Bonferroni-adjusted two-sided Mann-Whitney p; None without samples
    significant: bool

    @property
    def change(self) -> float:
        """Relative change of the p50 from A to B: (p50_b - p50_a) / |p50_a| (0.05 = 5 % slower); inf when
        p50_a is 0."""
        return (self.p50_b - self.p50_a) / abs(self.p50_a) if self.p50_a else math.inf

    @property
    def regression(self) -> bool:
        """True when the change is significant and B's p50 is larger (slower)."""
        return self.significant and self.p50_b > self.p50_a


@dataclass
class Comparison:
    """The A/B comparison of two runs: one HopChange per mode and hop, with the `threshold` (relative p50
    change) and `alpha` (significance level, after the Bonferroni adjustment) that were used."""

    a: RunInfo
    b: RunInfo
    threshold: float
    alpha: float
    hops: List[HopChange] = field(default_factory=list)
    controls: List[Tuple[str, float, float]] = field(default_factory=list)  # (control, p50 A, p50 B) in us

    @property
    def machine_moved(self) -> List[Tuple[str, float, float]]:
        """The controls whose p50 moved by MACHINE_MOVE or more from A to B: the machine was not the same."""
        return [c for c in self.controls if c[1] and abs(c[2] / c[1] - 1) >= MACHINE_MOVE]

    @property
    def regressions(self) -> List[HopChange]:
        """The hops that got significantly slower from A to B."""
        return [h for h in self.hops if h.regression]

    def to_dict(self) -> Dict:
        """The comparison as a JSON-able dict (both runs, threshold, alpha, the test, every hop with its
        change and regression flag, the regressions' names)."""
        return {"a": asdict(self.a), "b": asdict(self.b), "threshold": self.threshold, "alpha": self.alpha,
                "test": "two-sided Mann-Whitney U on per-frame times, Bonferroni-adjusted",
                "hops": [dict(asdict(h), change=h.change, regression=h.regression) for h in self.hops],
                "regressions": [f"{h.mode} {h.hop}" for h in self.regressions],
                "controls": [{"control": n, "p50_a": x, "p50_b": y, "change": (y / x - 1) if x else None}
                             for n, x, y in self.controls],
                "machine_moved": [n for n, _, _ in self.machine_moved]}

    def format(self) -> str:
        """The comparison as a text table: p50, p99 (us), p50 change and adjusted p-value per hop, SLOWER or
        faster where significant, and how many regressions."""
        out = [f"A: {self.a.describe()}", f"B: {self.b.describe()}"]
        for r in (self.a, self.b):
            if not r.complete:
                out.append(f"note: run {r.run_id} is incomplete: its figures are of the frames that came back")
        out.append(f"{'mode':7s} {'hop':28s} {'p50 A':>9s} {'p50 B':>9s} {'change':>8s} {'p99 A':>9s} {'p99 B':>9s} "
                   f"{'p (adj.)':>9s}  (us)")
        for h in self.hops:
            p = "no samples" if h.p_value is None else f"{h.p_value:9.2g}"
            flag = "  SLOWER" if h.regression else ("  faster" if h.significant else "")
            out.append(f"{h.mode:7s} {h.hop:28s} {h.p50_a:9.1f} {h.p50_b:9.1f} {h.change:+8.1%} {h.p99_a:9.1f} "
                       f"{h.p99_b:9.1f} {p:>9s}{flag}")
        for name, x, y in self.controls:
            out.append(f"{'control':7s} {name:28s} {x:9.1f} {y:9.1f} {(y / x - 1) if x else float('nan'):+8.1%}")
        out.append(f"significant: adjusted p < {self.alpha:g} and p50 change of at least {self.threshold:.0%}; "
                   f"{len(self.regressions)} hop(s) significantly slower in B than in A (two runs compared: whether "
                   "a slowdown lasts, and is the plan's rather than the machine's, is `history check`'s judgment)")
        moved = self.machine_moved
        if moved:
            out.append("note: the machine was not the same in both runs (" + ", ".join(
                f"control {n!r} {y / x - 1:+.0%}" for n, x, y in moved) + "): a change the controls share is the "
                "machine's, not the plan's (see `splitrack history check`)")
        return "\n".join(out)


def resolve(history: History, spec: str, other: Optional[RunInfo] = None) -> RunInfo:
    """A run from a spec: a run id, `latest`, `previous` (the run before `other`, or before the latest, in the
    same series), a label (its newest run) or a commit (prefix; its newest run). Raises HistoryError."""
    runs = history.run_infos()
    if not runs:
        raise HistoryError(f"{history.path} holds no runs yet: add some with `splitrack history add`")
    spec = str(spec).strip()
    if spec.isdigit():
        return history.run(int(spec))
    if spec == "latest":
        return runs[-1]
    if spec == "previous":
        ref = other or runs[-1]
        same = [r for r in runs if (r.label, r.rack, r.machine, r.plan_hash) == (ref.label, ref.rack, ref.machine,
                                                                                ref.plan_hash) and
                (r.time, r.run_id) < (ref.time, ref.run_id)]
        if not same:
            raise HistoryError(f"run {ref.run_id} is the first of its series ({ref.label!r}): nothing before it")
        return same[-1]
    by_label = [r for r in runs if r.label == spec]
    if by_label:
        return by_label[-1]
    by_commit = [r for r in runs if spec and r.commit_id.startswith(spec)]
    if by_commit:
        return by_commit[-1]
    raise HistoryError(f"no run matches {spec!r}: give a run id, latest, previous, a label or a commit "
                       f"(see `splitrack history list --db {history.path}`)")


def compare(history: History, a: RunInfo, b: RunInfo, threshold: float = 0.05, alpha: float = 0.01) -> Comparison:
    """Compare run b against run a (b is the newer, usually). Raises HistoryError when they share no hop."""
    if not (0 < alpha < 1) or threshold < 0:
        raise HistoryError("--alpha must be in (0, 1) and --threshold at least 0")
    sa, sb = history.samples(a.run_id), history.samples(b.run_id)
    va, vb = history.values(a.run_id), history.values(b.run_id)
    out = Comparison(a, b, threshold, alpha)
    pending = []
    for mode in [m for m in b.hops if m in a.hops] or sorted({m.split(" ")[0] for m, h in va if m.endswith(" p50")}
                                                              & {m.split(" ")[0] for m, h in vb if m.endswith(" p50")}):
        order = b.hops.get(mode) or []
        hops = [("e2e", "e2e", None)] + [("hop", h, i) for i, h in enumerate(order) if h in (a.hops.get(mode) or [])]
        for kind, hop, pos in hops:
            xa, xb = sa.get((mode, kind, hop)), sb.get((mode, kind, hop))
            if xa is not None and xb is not None and len(xa) and len(xb):
                pending.append((HopChange(mode, hop, pos, len(xa), len(xb), *_pcts(xa, xb), None, False), xa, xb))
            elif (f"{mode} p50", hop) in va and (f"{mode} p50", hop) in vb:
                g = lambda v, k: v.get((f"{mode} {k}", hop), float("nan"))
                out.hops.append(HopChange(mode, hop, pos, 0, 0, g(va, "p50"), g(vb, "p50"), g(va, "p99"), g(vb, "p99"),
                                          None, False))
    tests = len(pending)
    for h, xa, xb in pending:
        if np.array_equal(np.unique(xa), np.unique(xb)) and len(np.unique(xa)) == 1:
            p = 1.0  # both constant and equal: no difference to test
        else:
            p = float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
        h.p_value = min(1.0, p * tests)
        h.significant = h.p_value < alpha and abs(h.change) >= threshold
        out.hops.append(h)
    ca, cb = run_controls(va), run_controls(vb)
    out.controls = [(n, ca[n], cb[n]) for n in ca if n in cb]
    if not out.hops:
        raise HistoryError(f"runs {a.run_id} and {b.run_id} share no measured hop: compare runs of the same plan")
    out.hops.sort(key=lambda h: (h.mode, -1 if h.position is None else h.position))
    return out


def _pcts(xa: np.ndarray, xb: np.ndarray):
    return (float(np.percentile(xa, 50)), float(np.percentile(xb, 50)),
            float(np.percentile(xa, 99)), float(np.percentile(xb, 99)))
