"""What an estimator answers (`Estimate`: figures with their ranges) and how answers are cached (`Estimator`).

An Estimate is in absolute units (LUT, FF, DSP, BRAM18, latency in clock cycles, initiation interval in
cycles) at the level the calibration set and rule4ml are at: Vivado HLS C-synthesis reports, without the
AXI shell. Every figure has a range (`low`, `high`): where its true value is expected, from the estimator's
own uncertainty (rule4ml's MC dropout) or its spread on the calibration set (analytic). `extrapolated`
says which parts of the segment lie beyond the calibration data.

Cache: `<cache>/estimates/` (splitting.user_cache: $SPLITRACK_CACHE or the user cache folder), one small
JSON file per (layer signatures, configuration, board, estimator version), so a second plan of the same
model, or of another model sharing layers, reads its figures back without importing TensorFlow or torch.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .catalog import Device
from .layerspec import HlsConfig, LayerSpec
from .user_cache import cache_root as user_cache_root

FIGURES = ("lut", "ff", "dsp", "bram", "cycles", "interval")
RESOURCES = ("lut", "ff", "dsp", "bram")
BOUNDS = ("low", "point", "high")  # what a plan may be checked against (`--fit`)


@dataclass
class Estimate:
    """Resources and latency of one segment: lut, ff, dsp, bram (BRAM18 blocks), cycles (latency in clock
    cycles), interval (initiation interval in cycles), each with its range in `low` and `high` (figure ->
    value; a figure missing there has no range: the point). `estimator` names what produced them, `note`
    what the planner changed, `extrapolated` what lies beyond the calibration data.
    `+` adds resources, cycles and ranges and takes the larger interval."""

    lut: float
    ff: float
    dsp: float
    bram: float
    cycles: float
    interval: float
    estimator: str
    note: str = ""
    low: Dict[str, float] = field(default_factory=dict)
    high: Dict[str, float] = field(default_factory=dict)
    extrapolated: List[str] = field(default_factory=list)

    def bound(self, fig: str, at: str = "point") -> float:
        """Figure `fig` at `at`: 'point', or the 'low' or 'high' end of its range."""
        p = float(getattr(self, fig))
        if at == "point":
            return p
        return float((self.low if at == "low" else self.high).get(fig, p))

    def utilization(self, board: Device, at: str = "point") -> Dict[str, float]:
        """Fraction of the device's capacity used, per resource: {'lut', 'ff', 'dsp', 'bram'} -> float
        (1.0 = full), at the point or an end of the range (`at`)."""
        return {r: self.bound(r, at) / board.capacity(r) for r in RESOURCES}

    def peak(self, board: Device, at: str = "point") -> float:
        """The largest fraction in `utilization(board, at)`."""
        return max(self.utilization(board, at).values())

    def at_least(self, other: "Estimate", why: str) -> "Estimate":
        """Each figure and range end raised to `other`'s where that is larger (a design holding `other`'s
        layers cannot need less); `note` says so when a point was raised."""
        raised = any(getattr(other, f) > getattr(self, f) for f in FIGURES)
        low = {f: max(self.bound(f, "low"), other.bound(f, "low")) for f in FIGURES}
        high = {f: max(self.bound(f, "high"), other.bound(f, "high")) for f in FIGURES}
        if not raised and low == {f: self.bound(f, "low") for f in FIGURES} and high == {f: self.bound(f, "high") for f in FIGURES}:
            return self
        note = self.note
        if raised:
            note = why if not self.note or self.note == why else f"{self.note}; {why}"
        return replace(self, **{f: max(getattr(self, f), getattr(other, f)) for f in FIGURES}, note=note,
                       low=low, high=high, extrapolated=_union(self.extrapolated, other.extrapolated))

    def __add__(self, other: "Estimate") -> "Estimate":
        names = sorted(set(self.estimator.split("+")) | set(other.estimator.split("+")), key=_estimator_order)
        low = {f: self.bound(f, "low") + other.bound(f, "low") for f in FIGURES}
        high = {f: self.bound(f, "high") + other.bound(f, "high") for f in FIGURES}
        for f in ("interval",):
            low[f] = max(self.bound(f, "low"), other.bound(f, "low"))
            high[f] = max(self.bound(f, "high"), other.bound(f, "high"))
        return Estimate(
            self.lut + other.lut, self.ff + other.ff, self.dsp + other.dsp, self.bram + other.bram,
            self.cycles + other.cycles, max(self.interval, other.interval), "+".join(names),
            low=low, high=high, extrapolated=_union(self.extrapolated, other.extrapolated),
        )


def _union(a: Sequence[str], b: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(list(a) + list(b)))


def _estimator_order(name: str) -> int:
    return 0 if name.startswith("rule4ml") else 1


Request = Tuple[Tuple[LayerSpec, ...], HlsConfig]


def cache_root() -> Path:
    """The estimate cache folder: `<user cache>/estimates` ($SPLITRACK_CACHE or the user cache folder)."""
    return user_cache_root() / "estimates"


class Estimator:
    """Estimates segments under configurations for one device, through the on-disk cache."""

    name = "estimator"
    # A learned model is not monotone in the layers it is given (rule4ml predicts less for a run than for a
    # layer inside it); the planner's containment rule raises such figures. A structural model is exact
    # there: a longer run with a slower layer may rightly need less (its other layers keep a slower pace).
    learned = True

    def __init__(self, board: Device, cache: Optional[Path] = None, progress=None):
        self.board = board
        self.cache = Path(cache) if cache is not None else cache_root()
        self.progress = progress or (lambda msg: None)
        self.stats = {"requests": 0, "cached": 0, "computed": 0}

    @property
    def version(self) -> str:
        """String naming the estimator and everything that changes its figures; part of the cache key.

        Raises NotImplementedError here; subclasses define it."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for reports: which estimator answers, and why it is the one."""
        return self.name

    def key(self, layers: Sequence[LayerSpec], cfg: HlsConfig) -> str:
        """Cache key of (layers, cfg) on this device: SHA-256 hex digest (64 characters) of the layer
        signatures, configuration, device name and `version`, as canonical JSON."""
        version = self.__dict__.setdefault("_version", self.version)
        body = json.dumps(
            {"layers": [l.signature() for l in layers], "config": asdict(cfg), "board": self.board.name, "estimator": version},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def estimate_many(self, requests: Sequence[Request]) -> List[Estimate]:
        """One Estimate per (layers, config); cached ones read back, the rest computed in one batch."""
        out: List[Optional[Estimate]] = [None] * len(requests)
        keys = [self.key(l, c) for l, c in requests]
        todo: Dict[str, List[int]] = {}
        for i, k in enumerate(keys):
            f = self.cache / k[:2] / f"{k}.json"
            try:
                out[i] = Estimate(**json.loads(f.read_text()))
            except (OSError, ValueError, TypeError):
                todo.setdefault(k, []).append(i)
        self.stats["requests"] += len(requests)
        self.stats["cached"] += len(requests) - sum(len(v) for v in todo.values())
        if todo:
            firsts = [v[0] for v in todo.values()]
            self.progress(f"estimating {len(firsts)} candidate partitions x configurations with {self.name} ...")
            fresh = self._compute([requests[i] for i in firsts])
            self.stats["computed"] += len(firsts)
            for (k, idx), est in zip(todo.items(), fresh):
                for i in idx:
                    out[i] = est
                self._store(k, est)
        return out  # type: ignore[return-value]

    def estimate(self, layers: Sequence[LayerSpec], cfg: HlsConfig) -> Estimate:
        """The Estimate of one segment (`layers` in order) under `cfg`, through the cache."""
        return self.estimate_many([(tuple(layers), cfg)])[0]

    def _store(self, key: str, est: Estimate) -> None:
        d = self.cache / key[:2]
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(est)))
        tmp.replace(d / f"{key}.json")  # atomic: parallel planners never read half a file

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        raise NotImplementedError
