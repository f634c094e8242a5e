"""The calibration set: published hls4ml synthesis results (`splitting/data/hls4ml_published.csv`), as data.

One `CalibrationRow` per design the source reports (a whole model, or one layer's instance in a report):
the layers it covers (a small chain notation, parsed into `LayerSpec`s by `parse_chain`), the hls4ml
configuration (precision, reuse factor, strategy, io type), the part and clock, and the published LUT, FF,
DSP, BRAM18, latency and initiation interval in clock cycles, each None where the source gives none or the
set does not use it (the row's note says why). Every row names its source file and table or cell.

The chain notation: `in:16` or `in:32x32x3`, then `dense:UNITS`, `conv2d:FILTERS:KERNEL:PADDING`,
`maxpool2d:POOL`, `flatten`, `relu`, `softmax`, `fifo:DEPTHxLANES` (io_stream FIFOs between layers); `|`
starts another chain whose figures are summed with the first (two instances a report does not name apart).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import UserError
from .layerspec import HlsConfig, LayerSpec

DATA = Path(__file__).with_name("data") / "hls4ml_published.csv"
FIGURES = ("lut", "ff", "dsp", "bram", "latency", "ii")


@dataclass(frozen=True)
class CalibrationRow:
    """One published design: identity and source, configuration, and the published figures (None: not
    given or not used)."""

    id: str
    source: str
    ref: str
    tool: str
    level: str  # csynth (Vivado HLS estimate) or vsynth (after Vivado synthesis)
    part: str
    clock_ns: float
    io_type: str
    strategy: str
    reuse: int
    precision: str
    sparsity: float
    model: str
    layers: str
    figures: Tuple[Tuple[str, Optional[float]], ...]
    note: str = ""

    def figure(self, name: str) -> Optional[float]:
        """The published figure `name` (one of FIGURES), None when the row has none."""
        return dict(self.figures)[name]

    @property
    def config(self) -> HlsConfig:
        """The row's hls4ml configuration; the reuse factor per layer as hls4ml applies a model-level value
        (balance off: the published designs were configured so), hls4ml's default FIFO depths (the set's
        io_stream designs were synthesised without FIFO depth optimisation)."""
        return HlsConfig(self.precision, self.reuse, self.strategy, self.io_type, balance=False, fifo_depth="default")

    @cached_property
    def chains(self) -> List[List[LayerSpec]]:
        """The layers the figures cover, one list per independent chain."""
        return [parse_chain(part, f"{self.id}[{i}]") for i, part in enumerate(self.layers.split("|"))]

    @cached_property
    def kinds(self) -> Tuple[str, ...]:
        """The layer kinds of the row (`kind_of` of each layer), sorted, without duplicates."""
        return tuple(sorted({kind_of(l) for chain in self.chains for l in chain}))


def kind_of(layer: LayerSpec) -> str:
    """The layer kind the calibration sorts by: dense, conv, pooling, relu, softmax, activation (other
    element-wise functions), fifo, flatten or the Keras class name in lower case."""
    if layer.kind == "Dense":
        return "dense"
    if layer.kind in ("Conv1D", "Conv2D"):
        return "conv"
    if "Pooling" in layer.kind:
        return "pooling"
    if layer.kind == "Activation":
        return layer.activation if layer.activation in ("relu", "softmax") else "activation"
    return layer.kind.lower()


def _shape(text: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in text.split("x"))


def parse_chain(text: str, where: str = "chain") -> List[LayerSpec]:
    """LayerSpecs of a chain in the set's notation (see the module docstring). Raises UserError naming the
    token it cannot read."""
    tokens = text.split()
    if not tokens or not tokens[0].startswith("in:"):
        raise UserError(f"{where}: a chain starts with in:SHAPE, got {text!r}")
    shape = _shape(tokens[0][3:])
    out: List[LayerSpec] = []
    for n, tok in enumerate(tokens[1:]):
        name = f"l{n}"
        kind, *args = tok.split(":")
        if kind == "dense":
            units = int(args[0])
            p = shape[-1] * units + units
            spec = LayerSpec("Dense", name, shape, (units,), p, p, units, "linear", True)
        elif kind == "conv2d":
            f, k, pad = int(args[0]), int(args[1]), args[2]
            size = [(s - k) + 1 if pad == "valid" else s for s in shape[:2]]
            p = k * k * shape[-1] * f
            spec = LayerSpec("Conv2D", name, shape, (size[0], size[1], f), p, p, f, "linear", False, (k, k), (1, 1), pad)
        elif kind == "maxpool2d":
            k = int(args[0])
            spec = LayerSpec("MaxPooling2D", name, shape, (shape[0] // k, shape[1] // k, shape[2]), kernel=(k, k), strides=(k, k))
        elif kind == "flatten":
            spec = LayerSpec("Flatten", name, shape, (math.prod(shape),))
        elif kind in ("relu", "softmax", "sigmoid", "tanh"):
            spec = LayerSpec("Activation", name, shape, shape, activation=kind)
        elif kind == "fifo":
            depth, lanes = _shape(args[0])
            spec = LayerSpec("FIFO", name, (depth, lanes), (depth, lanes))
        else:
            raise UserError(f"{where}: unknown layer {tok!r} in {text!r}")
        out.append(spec)
        shape = spec.output_shape
    return out


def _num(text: str) -> Optional[float]:
    text = text.strip()
    return float(text) if text else None


@lru_cache(maxsize=4)
def load_rows(path: Path = DATA) -> Tuple[CalibrationRow, ...]:
    """Every row of the calibration CSV at `path` (comment lines start with #). Raises UserError for a row
    whose chain or numbers cannot be read."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    rows = []
    for rec in csv.DictReader(lines):
        try:
            row = CalibrationRow(
                rec["id"], rec["source"], rec["ref"], rec["tool"], rec["level"], rec["part"], float(rec["clock_ns"]),
                rec["io_type"], rec["strategy"], int(rec["reuse"]), rec["precision"], float(rec["sparsity"] or 0),
                rec["model"], rec["layers"], tuple((f, _num(rec[f])) for f in FIGURES), rec.get("note") or "",
            )
            row.chains  # parse now: a bad row fails at load, naming itself
        except (ValueError, KeyError) as e:
            raise UserError(f"{path}: row {rec.get('id')!r}: {e}") from None
        rows.append(row)
    return tuple(rows)


def sources(rows) -> Dict[str, int]:
    """Rows per source label."""
    out: Dict[str, int] = {}
    for r in rows:
        out[r.source] = out.get(r.source, 0) + 1
    return out
