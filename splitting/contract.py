"""Boundary contracts: what crosses a link between two stages, and how it is put on the wire.

This module is plain data plus numpy. It must stay importable on a PYNQ board (Python 3.8, numpy, no
TensorFlow), because the board agent uses it to encode and decode frames: one definition of the wire,
used by the plan, the agent, the RTL cosimulation and the benchmark byte counts.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

FLOAT32 = "float32"
_FIXED_RE = re.compile(
    r"^\s*ap_(u?)fixed\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(AP_\w+)\s*)?(?:,\s*(AP_\w+)\s*)?(?:,\s*\d+\s*)?>\s*$"
)
ROUNDING_MODES = ("AP_TRN", "AP_RND", "AP_RND_CONV", "AP_TRN_ZERO", "AP_RND_ZERO", "AP_RND_INF", "AP_RND_MIN_INF")
SATURATION_MODES = ("AP_WRAP", "AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM")


class ContractError(ValueError):
    """A contract or a frame that does not match its contract."""


@dataclass(frozen=True)
class FixedType:
    """An HLS ap_fixed / ap_ufixed type: `width` bits, `integer` of them before the binary point."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "AP_TRN"
    saturation: str = "AP_WRAP"

    @classmethod
    def parse(cls, text: str) -> "FixedType":
        """Read `ap_fixed<W,I>`, `ap_ufixed<W,I>` or `ap_fixed<W,I,AP_RND,AP_SAT>` (hls4ml's spelling; the
        defaults are AP_TRN and AP_WRAP as in Xilinx's ap_fixed.h). Raises ContractError on any other text."""
        m = _FIXED_RE.match(text)
        if not m:
            raise ContractError(
                f"cannot read fixed-point type {text!r}: write it as ap_fixed<W,I> or ap_fixed<W,I,AP_RND,AP_SAT>"
            )
        unsigned, w, i, rnd, sat = m.groups()
        ft = cls(int(w), int(i), not unsigned, rnd or "AP_TRN", sat or "AP_WRAP")
        if ft.width < 1 or ft.width > 64:
            raise ContractError(f"{text!r}: width must be 1..64 bits")
        if ft.rounding not in ROUNDING_MODES or ft.saturation not in SATURATION_MODES:
            raise ContractError(f"{text!r}: unknown rounding or saturation mode")
        return ft

    def __str__(self) -> str:
        base = f"ap_{'' if self.signed else 'u'}fixed<{self.width},{self.integer}"
        if (self.rounding, self.saturation) != ("AP_TRN", "AP_WRAP"):
            base += f",{self.rounding},{self.saturation}"
        return base + ">"

    @property
    def fractional(self) -> int:
        """Bits after the binary point (width - integer; negative when integer > width)."""
        return self.width - self.integer

    @property
    def step(self) -> float:
        """Value of one least significant bit: the quantisation step of this type."""
        return math.ldexp(1.0, -self.fractional)

    @property
    def raw_min(self) -> int:
        """Smallest raw integer of the type: -2**(width-1) signed, 0 unsigned."""
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        """Largest raw integer of the type: 2**(width-1) - 1 signed, 2**width - 1 unsigned."""
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    def rounded(self, values: np.ndarray) -> np.ndarray:
        """Real values -> raw integers (int64) with this type's rounding mode, before any overflow handling."""
        scaled = np.asarray(values, dtype=np.float64) * math.ldexp(1.0, self.fractional)
        if self.rounding == "AP_TRN":
            raw = np.floor(scaled)
        elif self.rounding == "AP_TRN_ZERO":
            raw = np.trunc(scaled)
        elif self.rounding == "AP_RND":
            raw = np.floor(scaled + 0.5)
        elif self.rounding == "AP_RND_ZERO":
            raw = np.where(scaled >= 0, np.ceil(scaled - 0.5), np.floor(scaled + 0.5))
        elif self.rounding == "AP_RND_MIN_INF":
            raw = np.ceil(scaled - 0.5)
        elif self.rounding == "AP_RND_INF":
            raw = np.where(scaled >= 0, np.floor(scaled + 0.5), np.ceil(scaled - 0.5))
        else:  # AP_RND_CONV: round half to even
            raw = np.round(scaled)
        return raw.astype(np.int64)

    def to_raw(self, values: np.ndarray) -> np.ndarray:
        """Quantise real values to raw integers with this type's rounding and overflow modes."""
        return self.overflow(self.rounded(values))

    def shift_right(self, raw: np.ndarray, s: int) -> np.ndarray:
        """Raw integers (int64, any shape) with s > 0 more fractional bits than this type, rounded onto its
        grid with its rounding mode: the quantisation step of an ap_fixed assignment (ap_fixed_base.h)."""
        half = 1 << (s - 1)
        mode = self.rounding
        if mode == "AP_TRN":
            return raw >> s
        if mode == "AP_TRN_ZERO":
            return np.where(raw >= 0, raw >> s, -((-raw) >> s))
        if mode == "AP_RND":
            return (raw + half) >> s
        if mode == "AP_RND_MIN_INF":
            return (raw + half - 1) >> s
        if mode == "AP_RND_ZERO":
            return np.where(raw >= 0, (raw + half - 1) >> s, -((-raw + half - 1) >> s))
        if mode == "AP_RND_INF":
            return np.where(raw >= 0, (raw + half) >> s, -((-raw + half) >> s))
        q = raw >> s  # AP_RND_CONV: half to even
        r = raw - (q << s)
        return q + ((r > half) | ((r == half) & (q & 1 == 1)))

    def overflow(self, raw: np.ndarray) -> np.ndarray:
        """Integers on this type's grid (int64, any shape) brought into its range with its overflow mode:
        AP_WRAP wraps (two's complement), AP_SAT clips, AP_SAT_ZERO zeroes, AP_SAT_SYM clips symmetrically."""
        lo, hi = self.raw_min, self.raw_max
        if self.saturation == "AP_WRAP":
            return (raw - lo) % (1 << self.width) + lo
        if self.saturation == "AP_SAT_ZERO":
            return np.where((raw > hi) | (raw < lo), 0, raw)
        if self.saturation == "AP_SAT_SYM" and self.signed:
            lo = -hi
        return np.clip(raw, lo, hi)

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        """Raw integers (any shape) -> their real values as float64 (raw * step), same shape."""
        return np.asarray(raw, dtype=np.float64) * self.step

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Real values (any shape) -> the nearest values this type holds, as float64 (to_raw then from_raw)."""
        return self.from_raw(self.to_raw(values))


def element_type(dtype: str) -> Optional[FixedType]:
    """None for float32, else the parsed fixed-point type."""
    if dtype == FLOAT32:
        return None
    return FixedType.parse(dtype)


_UNSIGNED = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}  # wire containers by bits
_SIGNED = {8: "<i1", 16: "<i2", 32: "<i4", 64: "<i8"}


def _container_bits(dtype: str) -> int:
    if dtype == FLOAT32:
        return 32
    ft = FixedType.parse(dtype)
    bits = 8
    while bits < ft.width:  # power-of-two byte containers: numpy (and DMA buffers) have no 24-bit ints
        bits *= 2
    return bits


@dataclass(frozen=True)
class Packing:
    """How a frame's elements sit on AXI-stream beats.

    Elements sit in little-endian containers of 8, 16, 32 or 64 bits, packed low lane first; the last beat carries
    `last_tkeep` (a byte mask) when it is only partly filled; tlast is set on beat `beats - 1` and only there.
    """

    data_width: int
    element_bits: int
    elements_per_beat: int
    beats: int
    last_tkeep: int

    @property
    def bytes_per_beat(self) -> int:
        """Bytes of one AXI-stream beat (data_width / 8)."""
        return self.data_width // 8

    @property
    def full_tkeep(self) -> int:
        """tkeep of a full beat: one bit per byte, all set."""
        return (1 << self.bytes_per_beat) - 1

    @property
    def tlast_beat(self) -> int:
        """Index of the beat that carries tlast: the last beat of the frame."""
        return self.beats - 1

    @classmethod
    def for_elements(cls, elements: int, dtype: str, data_width: int = 32) -> "Packing":
        """How `elements` values of `dtype` pack into AXI-stream beats of `data_width` bits: as many
        whole elements per beat as fit (no element straddles two beats), the last beat padded.
        Raises ContractError when data_width is not a multiple of 8 or holds no element."""
        ebits = _container_bits(dtype)
        if data_width % 8 or data_width < ebits:
            raise ContractError(
                f"AXI data width {data_width} cannot hold one {dtype} element ({ebits} bits): use a multiple of 8 >= {ebits}"
            )
        per_beat = data_width // ebits
        beats = max(1, -(-elements // per_beat))
        in_last = elements - (beats - 1) * per_beat
        last_bytes = in_last * ebits // 8
        return cls(data_width, ebits, per_beat, beats, (1 << last_bytes) - 1)


@dataclass(frozen=True)
class Select:
    """The slice of the producer's output that a consumer takes: elements start..stop-1 along `axis` (input
    splits scatter this way). With `flat`, the producer's output is the flat concatenation of several tensors
    (a partition with several outputs) and the slice start..stop-1 of it is one of them, reshaped to the
    contract's shape."""

    axis: int
    start: int
    stop: int
    flat: bool = False


@dataclass
class Contract:
    """One link: producer `src` -> consumer `dst` ("host" stands for the machine feeding and reading the rack).

    shape:   the tensor as it crosses the link, without the batch axis, row-major, channels last (Keras order)
    dtype:   "float32" or an ap_fixed type; fixed values travel as raw two's-complement integers
    select:  which slice of the producer's output goes on this link (None: all of it)
    combine: how the consumer assembles its input from all its incoming links, in `index` order:
             "single" (one link), "concat" (neuron-split parts, along `axis`), or "sum" (input-split partial
             sums: concatenated along `axis` on arrival, then summed by the consumer, which is the join
             partition, before bias and activation)
    dst_input: which input of the consumer the link feeds (a partition cut out of a graph may read several
             tensors: each is assembled from its own links as above; the consumer's input is then the flat
             concatenation of its inputs in `dst_input` order, which is what its one input stream carries)
    src_output: which output of the producer the link carries (informational: `select` with `flat` says
             where it sits in the producer's flat output)
    """

    src: str
    dst: str
    shape: Tuple[int, ...]
    dtype: str
    combine: str = "single"
    axis: int = -1
    index: int = 0
    count: int = 1
    select: Optional[Select] = None
    data_width: int = 32
    fifo_depth: Optional[int] = None
    order: str = "row-major, channels-last"
    dst_input: int = 0
    src_output: int = 0

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if isinstance(self.select, dict):
            self.select = Select(**self.select)
        if self.combine not in ("single", "concat", "sum"):
            raise ContractError(f"link {self.src}->{self.dst}: combine must be single, concat or sum")
        element_type(self.dtype)  # validates

    def _derived(self):
        """(fixed type, element count, packing), computed once per (dtype, shape, data_width): the agent calls
        encode/decode for every frame, and re-parsing the type each time cost more than the transport."""
        key = (self.dtype, self.shape, self.data_width)
        d = self.__dict__.get("_derived_cache")
        if d is None or d[0] != key:
            elements = int(np.prod(self.shape)) if self.shape else 1
            d = (key, element_type(self.dtype), elements, Packing.for_elements(elements, self.dtype, self.data_width))
            self.__dict__["_derived_cache"] = d
        return d

    @property
    def elements(self) -> int:
        """Number of values that cross the link per frame (product of `shape`; 1 for a scalar)."""
        return self._derived()[2]

    @property
    def fixed(self) -> Optional[FixedType]:
        """The link's FixedType, or None for float32."""
        return self._derived()[1]

    @property
    def step(self) -> float:
        """Quantisation step of the values on this link (0 for float32)."""
        ft = self.fixed
        return ft.step if ft else 0.0

    @property
    def packing(self) -> Packing:
        """The link's AXI-stream packing (beats per frame, elements per beat, tkeep of the last beat)."""
        return self._derived()[3]

    @property
    def payload_bytes(self) -> int:
        """Bytes of one frame on the wire (the beats, padding of the last beat included)."""
        p = self.packing
        return p.beats * p.bytes_per_beat

    # --- wire format -------------------------------------------------------------------------------
    def take(self, producer_output: np.ndarray) -> np.ndarray:
        """Apply `select` to one producer output (no batch axis)."""
        if self.select is None:
            return producer_output
        s = self.select
        idx = [slice(None)] * producer_output.ndim
        idx[s.axis] = slice(s.start, s.stop)
        out = producer_output[tuple(idx)]
        if s.flat:  # a flat output is 1-D per frame: 2-D is a batch
            out = out.reshape(self.shape if out.ndim == 1 else (out.shape[0],) + self.shape)
        return out

    def encode(self, values: np.ndarray) -> bytes:
        """One frame (shape `self.shape`) -> the bytes of its AXI-stream beats, little-endian."""
        values = np.asarray(values)
        _, ft, elements, p = self._derived()
        if values.size != elements:
            raise ContractError(
                f"link {self.src}->{self.dst}: frame has {values.size} elements, contract says {elements} {self.shape}"
            )
        container = _UNSIGNED.get(p.element_bits)
        if container is None:
            raise ContractError(f"element container of {p.element_bits} bits is not supported on the wire")
        flat = values.reshape(-1)
        if ft is None:
            words = flat.astype("<f4").view(container)
        elif ft.saturation == "AP_WRAP" and ft.width == p.element_bits:
            # wrapping to `width` bits is what the cast to a container of that width does (modulo 2**bits)
            words = ft.rounded(flat).astype(container)
        else:  # two's complement in the container: the cast is modulo 2**element_bits
            words = ft.to_raw(flat).astype(container)
        slots = p.beats * p.elements_per_beat
        if slots != elements:  # the last beat's unused lanes are zero
            padded = np.zeros(slots, dtype=container)
            padded[:elements] = words
            words = padded
        return words.tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        """Bytes of one frame -> values (float64 for fixed types, exactly the represented values)."""
        _, ft, elements, p = self._derived()
        if len(payload) != self.payload_bytes:
            raise ContractError(
                f"link {self.src}->{self.dst}: payload of {len(payload)} bytes, contract says {self.payload_bytes}"
            )
        bits = p.element_bits
        if ft is None:
            return np.frombuffer(payload, dtype="<f4", count=elements).astype(np.float32).reshape(self.shape)
        if ft.signed:  # the low `width` bits of each container, sign-extended by an arithmetic shift
            words = np.frombuffer(payload, dtype=_SIGNED[bits], count=elements)
            shift = bits - ft.width
            if shift:
                words = (words << shift) >> shift
        else:
            words = np.frombuffer(payload, dtype=_UNSIGNED[bits], count=elements)
            if bits > ft.width:
                words = words & ((1 << ft.width) - 1)
        return (words * ft.step).reshape(self.shape)  # float64, exact: the step is a power of two

    def beats(self, values: np.ndarray) -> List[Tuple[int, int, bool]]:
        """(tdata, tkeep, tlast) per beat: the AXI-stream view of one frame, for RTL cosimulation."""
        p = self.packing
        data = self.encode(values)
        out = []
        for b in range(p.beats):
            chunk = data[b * p.bytes_per_beat : (b + 1) * p.bytes_per_beat]
            last = b == p.tlast_beat
            out.append((int.from_bytes(chunk, "little"), p.last_tkeep if last else p.full_tkeep, last))
        return out

    # --- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict of the contract, with the derived element count, payload bytes and packing
        (those are ignored again by `from_dict`)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        for k in ("dst_input", "src_output"):  # written only when set: the plans of chains keep their hash
            if not d[k]:
                del d[k]
        if d["select"] is not None and not d["select"]["flat"]:
            del d["select"]["flat"]
        d["elements"] = self.elements
        d["payload_bytes"] = self.payload_bytes
        d["packing"] = asdict(self.packing)
        d["packing"]["tlast_beat"] = self.packing.tlast_beat
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Contract":
        """The contract of a `to_dict` dict (derived keys are dropped and recomputed). Raises TypeError on
        unknown keys and ContractError on a bad type."""
        keep = {k: v for k, v in d.items() if k not in ("elements", "payload_bytes", "packing")}
        return cls(**keep)


def _assemble_one(contracts: Sequence[Contract], parts: Sequence[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    order = sorted(range(len(contracts)), key=lambda i: contracts[i].index)
    return np.concatenate([parts[i] for i in order], axis=contracts[order[0]].axis)


def gather(contracts: Sequence[Contract], parts: Sequence[np.ndarray]) -> List[np.ndarray]:
    """A consumer's inputs, one array per `dst_input` (in that order), each assembled from its links (concat
    in `index` order along `axis` when several). `parts` are the links' frames (or batches), as `contracts`."""
    if len(contracts) != len(parts):
        raise ContractError(f"expected {len(contracts)} incoming frames, got {len(parts)}")
    groups: Dict[int, List[int]] = {}
    for i, c in enumerate(contracts):
        groups.setdefault(c.dst_input, []).append(i)
    if sorted(groups) != list(range(len(groups))):
        raise ContractError(f"links into {contracts[0].dst} feed inputs {sorted(groups)}: expected 0..{len(groups) - 1}")
    return [_assemble_one([contracts[i] for i in groups[g]], [parts[i] for i in groups[g]]) for g in sorted(groups)]


def assemble(contracts: Sequence[Contract], parts: Sequence[np.ndarray]) -> np.ndarray:
    """Build a consumer's input from the frames of its incoming links (ordered as `contracts`): for one input,
    the links' frames concatenated in `index` order; for several (`dst_input`), the flat concatenation of
    the inputs, each assembled so (a batch keeps its first axis)."""
    inputs = gather(contracts, parts)
    if len(inputs) == 1:
        return inputs[0]
    first = {c.dst_input: c for c in reversed(contracts)}
    flat = []
    for g, arr in enumerate(inputs):
        batched = arr.ndim > len(first[g].shape)
        flat.append(arr.reshape(arr.shape[0], -1) if batched else arr.reshape(-1))
    return np.concatenate(flat, axis=-1)
