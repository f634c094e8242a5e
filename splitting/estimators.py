"""The estimators the planner can use, by name, and the default one: per layer kind, the estimator with the
lowest error measured on the calibration set (`benchmarks/calibration.py` writes the choice to
`splitting/data/estimator_choice.json`; `splitting.accuracy` measures).

  analytic  the structural model fitted on the published set, with its calibrated spread (analytic_model, intervals)
  rule4ml   rule4ml 0.2.0's GNN with its MC-dropout range (rule4ml_adapter)
  auto      per layer kind the one of the two with the lowest measured error (the default)
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .calibration import DATA, kind_of
from .catalog import Device
from .errors import UserError
from .estimates import Estimate, Estimator, Request
from .intervals import analytic_estimate
from .layerspec import HlsConfig, LayerSpec

CHOICE = Path(__file__).with_name("data") / "estimator_choice.json"
def _data_hash() -> str:
    """First 12 hex digits of the SHA-256 of the calibration data and of the analytic model's sources: the
    analytic figures change with either, and key the estimate cache."""
    import hashlib

    from . import analytic_model, intervals, layerspec, reuse

    h = hashlib.sha256(DATA.read_bytes())
    for mod in (analytic_model, intervals, layerspec, reuse):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


class Analytic(Estimator):
    """The structural model fitted on the calibration set, with its calibrated range (see analytic_model)."""

    name = "analytic"
    learned = False

    @property
    def version(self) -> str:
        """'analytic-<hash of the calibration data and the model's sources>'."""
        return f"analytic-{_data_hash()}"

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        return [analytic_estimate(layers, cfg) for layers, cfg in requests]


def choice() -> Dict[str, str]:
    """Layer kind -> estimator name with the lowest measured error (analytic for kinds not measured)."""
    try:
        return dict(json.loads(CHOICE.read_text())["choice"])
    except (OSError, ValueError, KeyError):
        return {}


class Auto(Estimator):
    """Per layer kind, the estimator with the lowest measured error (`choice()`): the analytic segment
    estimate, with the resources of layers whose kind rule4ml estimates better replaced by rule4ml's
    figures for those layers alone. Cycles and interval stay analytic (rule4ml knows no io_stream)."""

    name = "auto"

    def __init__(self, board: Device, cache: Optional[Path] = None, progress=None):
        super().__init__(board, cache, progress)
        self.choice = choice()
        self._rule4ml = None
        self.learned = "rule4ml" in self.choice.values()

    @property
    def version(self) -> str:
        """The analytic version plus the choice per kind."""
        kinds = ",".join(f"{k}={v}" for k, v in sorted(self.choice.items()))
        return f"auto-{_data_hash()}-[{kinds}]"

    def uses(self, layers: Sequence[LayerSpec]) -> List[str]:
        """The estimator names the segment's layers use."""
        return sorted({self.choice.get(kind_of(l), "analytic") for l in layers})

    def describe(self) -> str:
        """Which estimator answers for which layer kinds, and why."""
        by: Dict[str, List[str]] = {}
        for k, v in sorted(self.choice.items()):
            by.setdefault(v, []).append(k)
        if not by:
            return "analytic (no measured choice found: splitting/data/estimator_choice.json)"
        parts = [f"{name} for {', '.join(kinds)}" for name, kinds in sorted(by.items())]
        return "; ".join(parts) + " (lowest error on the published hls4ml results: benchmarks/calibration.py)"

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        out = []
        for layers, cfg in requests:
            est = analytic_estimate(layers, cfg)
            swap = [l for l in layers if self.choice.get(kind_of(l), "analytic") == "rule4ml"]
            if swap:
                if self._rule4ml is None:
                    from .rule4ml_adapter import Rule4ml

                    self._rule4ml = Rule4ml(self.board, self.cache, self.progress)
                for l in swap:
                    a = analytic_estimate((l,), cfg, wrapper=False)
                    r = self._rule4ml.estimate((l,), cfg)
                    est = _swap_resources(est, a, r)
            out.append(est)
        return out


def _swap_resources(est: Estimate, old: Estimate, new: Estimate) -> Estimate:
    figs = ("lut", "ff", "dsp", "bram")
    pts = {f: max(0.0, getattr(est, f) - getattr(old, f) + getattr(new, f)) for f in figs}
    low = dict(est.low, **{f: max(0.0, est.bound(f, "low") - old.bound(f, "low") + new.bound(f, "low")) for f in figs})
    high = dict(est.high, **{f: est.bound(f, "high") - old.bound(f, "high") + new.bound(f, "high") for f in figs})
    names = sorted(set(est.estimator.split("+")) | {"rule4ml"})
    return replace(est, **pts, low=low, high=high, estimator="+".join(names))


def _rule4ml_class():
    from .rule4ml_adapter import Rule4ml

    return Rule4ml


ESTIMATORS = {"auto": lambda: Auto, "analytic": lambda: Analytic, "rule4ml": _rule4ml_class}


def make(name: str, board: Device, cache: Optional[Path] = None, progress=None) -> Estimator:
    """An estimator called `name` ('auto', 'analytic' or 'rule4ml') for `board`, caching under `cache`
    (default `estimates.cache_root()`); `progress` gets status lines.

    Raises UserError for another name, or (rule4ml) for a board rule4ml has no model of."""
    try:
        cls = ESTIMATORS[name]()
    except KeyError:
        raise UserError(f"unknown estimator {name!r}: choose {', '.join(ESTIMATORS)}") from None
    return cls(board, cache, progress)


# rule4ml is a learned model: outside its training data its DSP figure can be far from anything hls4ml
# builds. One DSP48 per parallel multiplier at >= 10 bits is what hls4ml's reuse factor allocates (the set:
# 0.5-1.08 of that); a figure beyond PLAUSIBLE_FACTOR of it is implausible.
PLAUSIBLE_FACTOR = 4.0


def implausible(specs: Sequence[LayerSpec], cfg: HlsConfig, est: Estimate, capacity_dsp: float) -> List[str]:
    """Why `est` of the segment `specs` under `cfg` is implausible ([] when it is not): a rule4ml DSP figure
    beyond PLAUSIBLE_FACTOR of, or under 1/PLAUSIBLE_FACTOR of, the multipliers hls4ml allocates."""
    import math

    from .layerspec import COMPUTE
    from .reuse import layer_reuse

    if "rule4ml" not in est.estimator or cfg.bits < 10:  # below 10 bits hls4ml puts multipliers in LUTs
        return []
    mults = sum(math.ceil(l.fan_in * l.units / r) for l, r in zip(specs, layer_reuse(specs, cfg)) if l.kind in COMPUTE)
    pct = 100 * est.dsp / capacity_dsp
    what = f"at reuse {cfg.reuse_factor} it has about {mults:.0f} parallel multipliers (one DSP48 each at {cfg.bits} bits)"
    if est.dsp > PLAUSIBLE_FACTOR * mults + 2:
        return [f"rule4ml's {est.dsp:.1f} DSP ({pct:.1f} %) is implausibly high: {what}; more than {PLAUSIBLE_FACTOR:g}x that"]
    if mults >= 8 and est.dsp < mults / PLAUSIBLE_FACTOR:
        return [f"rule4ml's {est.dsp:.1f} DSP ({pct:.1f} %) is implausibly low: {what}; "
                f"under 1/{PLAUSIBLE_FACTOR:g} of that, so the partition may not fit once synthesised"]
    return []



