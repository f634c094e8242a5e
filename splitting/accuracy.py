"""How right each estimator is on the calibration set: per figure the sMAPE (mean of 2|p - a| / (|p| + |a|)),
the worst row, and how often the estimator's range holds the published figure; per layer kind the mean
sMAPE over the resources, from which the default estimator per kind is chosen.

The analytic model is fitted on the set itself, so it is measured leave-one-out: each row predicted by the
model fitted on the other rows, its range by the spread of the other rows (rows that alone inform a
coefficient are measured in-sample and counted apart). rule4ml predicts for four boards: the set's
UltraScale+ parts are given to it as zcu102 (xczu*) and alveo-u250 (xcu250).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import analytic_model as am
from . import catalog
from .calibration import CalibrationRow, load_rows
from .intervals import FLOOR, ROW_FIGS, _unvalidated, loo_ratios

RULE4ML_BOARD = {"xczu": "zcu102", "xcu250": "alveo-u250", "xcu200": "alveo-u200", "xc7z020": "pynq-z2"}
KINDS = ("dense", "conv", "relu", "pooling", "softmax", "fifo")


@dataclass
class Prediction:
    """One estimator's figures for one row: figure -> (point, low, high); `note` says how it was made."""

    row: CalibrationRow
    figures: Dict[str, Tuple[float, float, float]]
    note: str = ""


@dataclass
class Score:
    """sMAPE, worst row and range coverage of one estimator on one figure."""

    figure: str
    n: int = 0
    smape: float = 0.0
    worst: float = 0.0
    worst_row: str = ""
    covered: int = 0
    pairs: List[Tuple[str, float, float, float, float]] = field(default_factory=list)  # id, published, point, low, high


def smape(p: float, a: float) -> float:
    """Symmetric absolute percentage error of prediction p against published a, in [0, 2] (0 when both 0)."""
    return 0.0 if p == a == 0 else 2 * abs(p - a) / (abs(p) + abs(a))


def analytic_predictions(rows: Sequence[CalibrationRow] = ()) -> List[Prediction]:
    """Leave-one-out analytic predictions with leave-one-out ranges for every C-synthesis row."""
    rows = list(rows or load_rows())
    ratios = loo_ratios(rows)
    bad = _unvalidated(rows)
    out = []
    for i, row in enumerate(rows):
        if row.level != "csynth":
            continue
        coef = am.fit(rows[:i] + rows[i + 1 :]) if i not in bad else am.fit(rows)
        pred = am.predict_row(row, coef)
        figs = {}
        for fig, col in ROW_FIGS.items():
            others = [r for rid, r in ratios[fig] if rid != row.id]
            lo, hi = min([1.0] + others), max([1.0] + others)
            figs[fig] = (pred[col], pred[col] * lo, pred[col] * hi)
        out.append(Prediction(row, figs, "in-sample (alone informs a coefficient)" if i in bad else "leave-one-out"))
    return out


def rule4ml_predictions(rows: Sequence[CalibrationRow] = (), cache=None, progress=None) -> List[Prediction]:
    """rule4ml's predictions with its MC-dropout ranges for the C-synthesis rows it can read: not the FIFO rows,
    nor rows of pooling layers alone (its adapter would answer with the analytic model there)."""
    from .rule4ml_adapter import Rule4ml

    rows = [r for r in (rows or load_rows())
            if r.level == "csynth" and "fifo" not in r.kinds and set(r.kinds) - {"pooling", "flatten"}]
    by_board: Dict[str, Rule4ml] = {}
    out = []
    for row in rows:
        board = next((b for prefix, b in RULE4ML_BOARD.items() if row.part.startswith(prefix)), "zcu102")
        est = by_board.setdefault(board, Rule4ml(catalog.board(board), cache, progress))
        parts = est.estimate_many([(tuple(chain), row.config) for chain in row.chains])
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        figs = {f: (total.bound(f), total.bound(f, "low"), total.bound(f, "high")) for f in ROW_FIGS}
        out.append(Prediction(row, figs, f"rule4ml as {board}"))
    return out


def score(preds: Sequence[Prediction], keep: Callable[[CalibrationRow], bool] = lambda r: True) -> Dict[str, Score]:
    """Per figure, the Score of `preds` over the rows `keep` accepts that publish that figure (a pair with both
    published and estimated under intervals.FLOOR counts as agreeing: error 0, in range)."""
    out = {f: Score(f) for f in ROW_FIGS}
    for p in preds:
        if not keep(p.row):
            continue
        for fig, col in ROW_FIGS.items():
            a = p.row.figure(col)
            if a is None:
                continue
            point, lo, hi = p.figures[fig]
            agree = a < FLOOR[fig] and point < FLOOR[fig]  # both too small to differ relatively: agreement
            s = out[fig]
            e = 0.0 if agree else smape(point, a)
            s.n += 1
            s.smape += e
            s.covered += agree or lo - 1e-9 <= a <= hi + 1e-9
            s.pairs.append((p.row.id, a, point, lo, hi))
            if e >= s.worst:
                s.worst, s.worst_row = e, p.row.id
    for s in out.values():
        if s.n:
            s.smape /= s.n
    return out


def row_kind(row: CalibrationRow) -> str:
    """The row's layer kind when it isolates one (flatten aside), else 'model'."""
    ks = [k for k in row.kinds if k != "flatten"]
    return ks[0] if len(ks) == 1 else "model"


def kind_errors(preds: Sequence[Prediction]) -> Dict[str, Optional[float]]:
    """Per layer kind, the mean sMAPE over LUT, FF, DSP and BRAM of the rows isolating that kind (None: no
    such row)."""
    out: Dict[str, Optional[float]] = {}
    for kind in KINDS:
        sc = score(preds, lambda r, k=kind: row_kind(r) == k)
        vals = [s.smape for f, s in sc.items() if f in ("lut", "ff", "dsp", "bram") and s.n]
        out[kind] = statistics.mean(vals) if vals else None
    return out


def choose(errors: Dict[str, Dict[str, Optional[float]]]) -> Dict[str, str]:
    """Per kind, the estimator with the lowest measured error (analytic where nothing was measured)."""
    out = {}
    for kind in KINDS:
        measured = {name: e[kind] for name, e in errors.items() if e.get(kind) is not None}
        out[kind] = min(measured, key=measured.get) if measured else "analytic"
    return out
