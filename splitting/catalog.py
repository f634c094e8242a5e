"""The board catalog: FPGA resources, programmable-logic clock and part number of every board we can plan for.

The PYNQ-Z2 is the board of the rack. The others are the boards rule4ml 0.2.0 was trained on (its
`parsers/supported_boards.json`), so that a plan can be estimated for them too; for them we plan at a
conservative 200 MHz fabric clock. Resources are counted as Vivado reports them: BRAM in 18 Kb halves.

The utilisation cap (default 0.8 of every resource) leaves room for routing and the AXI-stream shell;
multi-FPGA partitioning flows use the same margin. Plain data, no TensorFlow.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List

from .errors import UserError

RESOURCES = ("lut", "ff", "dsp", "bram")
DEFAULT_CAP = 0.8


@dataclass(frozen=True)
class Device:
    """One kind of FPGA board of the catalog (not a board of a rack file: that is `harness.rack.rackfile.Board`):
    part, resources (LUT, FF, DSP, BRAM18 blocks), fabric clock in MHz and link speed in Gb/s; figures from
    the vendor's data sheet."""

    name: str
    part: str
    lut: int
    ff: int
    dsp: int
    bram: int  # BRAM18 blocks
    clock_mhz: float
    link_gbps: float  # the board-to-board link the rack uses
    rule4ml: bool  # rule4ml 0.2.0 has this board as a categorical input

    def capacity(self, resource: str) -> int:
        """How many of `resource` ('lut', 'ff', 'dsp' or 'bram') the board has."""
        return getattr(self, resource)

    @property
    def clock_period_ns(self) -> float:
        """Fabric clock period in nanoseconds."""
        return 1000.0 / self.clock_mhz

    def to_dict(self) -> Dict:
        """JSON-ready dict of the board."""
        return asdict(self)


BOARDS: Dict[str, Device] = {
    b.name: b
    for b in (
        Device("pynq-z2", "xc7z020clg400-1", 53_200, 106_400, 220, 280, 100.0, 1.0, True),
        Device("zcu102", "xczu9eg-ffvb1156-2-e", 274_080, 548_160, 2_520, 1_824, 200.0, 1.0, True),
        Device("alveo-u200", "xcu200-fsgd2104-2-e", 1_182_240, 2_364_480, 6_840, 4_320, 200.0, 10.0, True),
        Device("alveo-u250", "xcu250-figd2104-2L-e", 1_728_000, 3_456_000, 12_288, 5_376, 200.0, 10.0, True),
    )
}


def board(name: str) -> Device:
    """The catalog entry named `name` (case-insensitive). Raises UserError listing the boards there are."""
    try:
        return BOARDS[name.lower()]
    except KeyError:
        raise UserError(f"unknown board {name!r}: choose one of {', '.join(BOARDS)} (see `splitrack boards`)") from None


def table(cap: float = DEFAULT_CAP) -> List[str]:
    """The catalog as text lines, with the planning budget at utilisation cap `cap`."""
    head = f"{'board':<11} {'part':<22} {'LUT':>9} {'FF':>9} {'DSP':>6} {'BRAM18':>6} {'clock':>8} {'link':>7}  rule4ml"
    lines = [head, "-" * len(head)]
    for b in BOARDS.values():
        lines.append(
            f"{b.name:<11} {b.part:<22} {b.lut:>9,} {b.ff:>9,} {b.dsp:>6,} {b.bram:>6,} {b.clock_mhz:>5.0f} MHz"
            f" {b.link_gbps:>4g} Gb  {'yes' if b.rule4ml else 'no'}"
        )
    lines.append(f"planning budget: {cap:.0%} of every resource (change with --max-util)")
    return lines
