"""Ranges for the analytic estimate, and where an estimate leaves the calibration data.

Spread: each published figure of the set (C-synthesis rows) is predicted by the analytic model fitted on every
*other* row (leave one row out), and the ratio published / predicted is kept; a figure's range is the point
times the smallest and the largest ratio of that figure over the set (figures under FLOOR on both sides are
too small to say anything relative and are left out). A layer the set does not cover (`extrapolated`: another
strategy, precision, layer type, a larger layer or reuse factor than any published one) gets at least
EXTRAPOLATED either way instead, and the estimate says which layers and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from . import analytic_model as am
from .calibration import DATA, CalibrationRow, kind_of, load_rows
from .estimates import Estimate
from .layerspec import COMPUTE, HlsConfig, LayerSpec

ROW_FIGS = {"lut": "lut", "ff": "ff", "dsp": "dsp", "bram": "bram", "cycles": "latency", "interval": "ii"}
FLOOR = {"lut": 100, "ff": 100, "dsp": 2, "bram": 2, "cycles": 4, "interval": 4}
EXTRAPOLATED = (0.5, 2.0)  # no published figure: a factor of two either way, at least


def loo_ratios(rows: Sequence[CalibrationRow] = ()) -> Dict[str, List[Tuple[str, float]]]:
    """Per figure, (row id, published / leave-one-out prediction) over the C-synthesis rows of the set whose
    leave-one-out fit still has data for every coefficient the row rests on (`not_cross_validated` lists
    the others)."""
    rows = list(rows or load_rows())
    out: Dict[str, List[Tuple[str, float]]] = {f: [] for f in ROW_FIGS}
    for i, row in enumerate(rows):
        if row.level != "csynth" or i in _unvalidated(rows):
            continue
        coef = am.fit(rows[:i] + rows[i + 1 :])
        pred = am.predict_row(row, coef)
        for fig, col in ROW_FIGS.items():
            pub = row.figure(col)
            if pub is None or (pub < FLOOR[fig] and pred[col] < FLOOR[fig]) or pred[col] <= 0:
                continue
            out[fig].append((row.id, pub / pred[col]))
    return out


def _unvalidated(rows: List[CalibrationRow]) -> set:
    key = tuple(r.id for r in rows)
    if key not in _UNVALIDATED:
        bad = set()
        for i, row in enumerate(rows):
            _, priors = am.fit_sources(rows[:i] + rows[i + 1 :])
            needs = {c for k in row.kinds for c in am.DEPENDS.get(k, ())}
            if row.level == "csynth" and needs & priors:
                bad.add(i)
        _UNVALIDATED[key] = bad
    return _UNVALIDATED[key]


_UNVALIDATED: Dict[tuple, set] = {}


def not_cross_validated(rows: Sequence[CalibrationRow] = ()) -> List[str]:
    """Ids of the C-synthesis rows that alone inform a coefficient (their leave-one-out fit would fall
    back on a prior): the model is fitted on them but not tested by them."""
    rows = list(rows or load_rows())
    return [rows[i].id for i in sorted(_unvalidated(rows))]


@lru_cache(maxsize=1)
def analytic_spread() -> Dict[str, Tuple[float, float]]:
    """figure -> (low factor, high factor) of the analytic estimate, from `loo_ratios` (always low <= 1 <= high).
    Cached in the estimate cache by the hash of the data and of the model's source (a second hundred folds
    per planner start cost a second)."""
    import hashlib
    import json
    import os

    from .estimates import cache_root

    h = hashlib.sha256()
    for f in (DATA, Path(am.__file__), Path(__file__)):
        h.update(Path(f).read_bytes())
    path = cache_root() / f"spread-{h.hexdigest()[:16]}.json"
    try:
        return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass
    out = {}
    for fig, pairs in loo_ratios().items():
        ratios = [r for _, r in pairs]
        out[fig] = (min([1.0] + ratios), max([1.0] + ratios))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the second again
    return out


@dataclass(frozen=True)
class Domain:
    """What the calibration set covers, for `extrapolated`: compute-layer strategies, precisions (bits),
    largest unpruned layer (products) and reuse factor; the layer kinds with a published figure per io type."""

    strategies: frozenset
    bits: frozenset
    max_products: int
    max_reuse: int
    kinds: frozenset  # (kind, io type) pairs


@lru_cache(maxsize=1)
def domain() -> Domain:
    """The Domain of the calibration set's C-synthesis rows that carry resource figures."""
    strategies, bits, kinds = set(), set(), set()
    max_p = max_r = 0
    for row in load_rows():
        if row.level != "csynth" or all(row.figure(f) is None for f in ("lut", "ff", "dsp")):
            continue
        for chain in row.chains:
            for l in chain:
                kinds.add((kind_of(l), row.io_type))
                if l.kind in COMPUTE and row.sparsity == 0:
                    strategies.add(row.strategy)
                    bits.add(row.config.bits)
                    max_p = max(max_p, l.fan_in * l.units)
                    max_r = max(max_r, row.reuse)
    return Domain(frozenset(strategies), frozenset(bits), max_p, max_r, frozenset(kinds))


ALL = ("lut", "ff", "dsp", "bram", "cycles", "interval")


def extrapolated(l: LayerSpec, cfg: HlsConfig, r: int) -> List[Tuple[str, Tuple[str, ...]]]:
    """Why layer `l` at reuse `r` under `cfg` lies beyond the calibration data, each reason with the figures
    it leaves uncalibrated ([] when none). DSP under the Resource strategy is hls4ml's multiplier allocation,
    ceil(products / reuse) as for Latency at reuse > 1 (the set: 1.00-1.03 of it): calibrated."""
    d = domain()
    k = kind_of(l)
    why: List[Tuple[str, Tuple[str, ...]]] = []
    if l.kind in ("Flatten", "Dropout"):
        return why
    if (k, cfg.io_type) not in d.kinds:
        what = {"conv": "an unpruned convolution's LUT/FF/DSP"}.get(k, f"{k} in {cfg.io_type}")
        why.append((f"{l.name}: no published figure for {what}", ALL))
    if l.kind in COMPUTE:
        if cfg.strategy not in d.strategies:
            why.append((f"{l.name}: {cfg.strategy} strategy (the set: {', '.join(sorted(d.strategies))} only)",
                        ("lut", "ff", "bram", "cycles", "interval")))
        if cfg.bits not in d.bits:
            why.append((f"{l.name}: {cfg.bits}-bit precision (the set: {', '.join(map(str, sorted(d.bits)))}-bit)", ALL))
        p = l.fan_in * l.units
        if p > d.max_products:
            why.append((f"{l.name}: {p} products (the set's largest layer: {d.max_products})",
                        ("lut", "ff") if r > 1 else ("lut", "ff", "dsp")))
        if r > d.max_reuse:
            why.append((f"{l.name}: reuse {r} (the set's largest: {d.max_reuse})", ("lut", "ff", "cycles", "interval")))
    if l.activation != "linear" and l.kind in COMPUTE and (l.activation, cfg.io_type) not in d.kinds:
        why.append((f"{l.name}: no published figure for {l.activation} in {cfg.io_type}", ("lut", "ff", "bram", "dsp")))
    return why


FIGURE_NAMES = {"lut": "LUT", "ff": "FF", "dsp": "DSP", "bram": "BRAM", "cycles": "cycles", "interval": "interval"}
WIDENED = "[widened: "


def widened_note(figs: Sequence[str]) -> str:
    """'[widened: LUT, FF, ...]': the figures of a layer an `extrapolated` reason widens to EXTRAPOLATED at least
    (the others keep the calibrated spread); `widened_figures` reads it back."""
    return WIDENED + ", ".join(FIGURE_NAMES[f] for f in ALL if f in figs) + "]"


def widened_figures(reason: str) -> Tuple[str, ...]:
    """The figures ('lut', ...) an `extrapolated` reason says were widened (() for a reason without
    `widened_note`, e.g. rule4ml's)."""
    if WIDENED not in reason:
        return ()
    names = reason.rsplit(WIDENED, 1)[1].rstrip("]").split(", ")
    back = {v: k for k, v in FIGURE_NAMES.items()}
    return tuple(back[n] for n in names if n in back)


def _scaled(p: Dict[str, float], f: Dict[str, float]) -> Dict[str, float]:
    return {k: v * f.get(k, 1.0) for k, v in p.items()}


def analytic_estimate(layers: Sequence[LayerSpec], cfg: HlsConfig, name: str = "analytic",
                      wrapper: bool = True) -> Estimate:
    """The analytic Estimate of a segment with its range: per layer, the point scaled by the calibrated
    spread (or EXTRAPOLATED for layers beyond the set), FIFOs by the spread; summed as the figures are."""
    from .reuse import layer_reuse

    reuses = layer_reuse(layers, cfg)
    per, fifo = am.segment(layers, cfg, reuses, wrapper=wrapper)
    spread = analytic_spread()
    lows, highs, why = [], [], []
    for l, r, p in zip(layers, reuses, per):
        reasons = extrapolated(l, cfg, r)
        why += [f"{text} {widened_note(figs)}" for text, figs in reasons]
        wide = {f for _, figs in reasons for f in figs}
        lo = {f: (min(spread[f][0], EXTRAPOLATED[0]) if f in wide else spread[f][0]) for f in spread}
        hi = {f: (max(spread[f][1], EXTRAPOLATED[1]) if f in wide else spread[f][1]) for f in spread}
        lows.append(_scaled(p, lo))
        highs.append(_scaled(p, hi))
    io = cfg.io_type
    point_c, point_i = am.combine(per, layers, io)
    low_c, low_i = am.combine(lows, layers, io)
    high_c, high_i = am.combine(highs, layers, io)
    fl = _scaled(fifo, {f: spread[f][0] for f in spread})
    fh = _scaled(fifo, {f: spread[f][1] for f in spread})

    def total(ps, f, extra):
        return sum(p[f] for p in ps) + extra[f]

    return Estimate(
        total(per, "lut", fifo), total(per, "ff", fifo), total(per, "dsp", fifo), total(per, "bram", fifo),
        point_c, point_i, name,
        low={"lut": total(lows, "lut", fl), "ff": total(lows, "ff", fl), "dsp": total(lows, "dsp", fl),
             "bram": total(lows, "bram", fl), "cycles": low_c, "interval": low_i},
        high={"lut": total(highs, "lut", fh), "ff": total(highs, "ff", fh), "dsp": total(highs, "dsp", fh),
              "bram": math.ceil(total(highs, "bram", fh) - 1e-9), "cycles": high_c, "interval": high_i},
        extrapolated=list(dict.fromkeys(why)),
    )

