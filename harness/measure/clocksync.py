"""Board clock offsets from four-timestamp exchanges (as NTP does), before and after a run.

A probe is one exchange: the host notes t1 and sends; the board notes t2 on arrival and t3 when it
answers; the host notes t4 on arrival. With host and board clocks in ns:

    delay  = (t4 - t1) - (t3 - t2)            round trip spent on the wire and in the stacks
    offset = ((t2 - t1) + (t3 - t4)) / 2      board clock minus host clock

The offset is exact when the two directions take the same time; otherwise it is off by half the
asymmetry, which is at most delay / 2. So of many probes we keep the ones with the smallest delay
(min-delay filtering): they carry the tightest error bound. Estimates before and after a run give
the drift, and the offset at any host time is interpolated between them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from splitting.errors import UserError

Probe = Tuple[int, int, int, int]  # t1 (host), t2 (board), t3 (board), t4 (host), all ns


class ClockSyncError(UserError):
    """Probes that cannot give an offset (none answered, or timestamps out of order)."""


@dataclass(frozen=True)
class OffsetEstimate:
    """One board's clock offset at one moment, from the best probes of a burst."""

    offset_ns: float  # board clock minus host clock
    delay_ns: float  # round-trip delay of the best probe
    error_ns: float  # bound on |offset error|: half the best probe's delay
    at_host_ns: float  # host time the estimate refers to (middle of the best probe)
    probes: int  # how many probes were taken
    kept: int  # how many (the lowest-delay ones) went into the estimate

    def to_dict(self) -> Dict[str, float]:
        """JSON-ready dict of the estimate (nanoseconds)."""
        return asdict(self)


def delay_and_offset(p: Probe) -> Tuple[int, float]:
    """NTP's on-wire calculation (RFC 5905, section 8) for one probe (t1 host send, t2 board receive, t3
    board send, t4 host receive; integer ns): returns (round-trip delay, board-minus-host offset) in ns.
    Raises ClockSyncError when the timestamps are out of order."""
    t1, t2, t3, t4 = p
    delay = (t4 - t1) - (t3 - t2)
    if t4 < t1 or t3 < t2 or delay < 0:
        raise ClockSyncError(
            f"probe timestamps out of order (t1={t1} t2={t2} t3={t3} t4={t4}): the board's clock must be monotonic"
        )
    return delay, ((t2 - t1) + (t3 - t4)) / 2.0


NEAR_BEST = 2.0  # a kept probe's delay is at most this multiple of the best probe's


def estimate(probes: Sequence[Probe], keep: float = 0.1) -> OffsetEstimate:
    """Offset from a burst of probes: median offset of the `keep` fraction with the smallest delay, of those
    whose delay is at most NEAR_BEST times the smallest. On a busy machine most of a burst can wait for the CPU
    for milliseconds: a tenth of 64 probes then held probes of 0.13 to 3.9 ms whose median offset was 1.8 ms off
    (the boards share the host's clock), and frames mapped with it had links of -1.0 to -1.5 ms (runs kept out
    as untrusted: benchmarks/out/regression_detector-3 and -5)."""
    if not probes:
        raise ClockSyncError("no clock probe answered: is the board's agent running?")
    rated = sorted((delay_and_offset(p) + (p,) for p in probes), key=lambda r: r[0])
    n_keep = max(1, int(round(len(rated) * keep)))
    best = [r for r in rated[:n_keep] if r[0] <= NEAR_BEST * rated[0][0]]
    n_keep = len(best)
    # median of the kept offsets: robust against one probe that was delayed on one side only
    offsets = sorted(o for _, o, _ in best)
    mid = len(offsets) // 2
    offset = offsets[mid] if len(offsets) % 2 else (offsets[mid - 1] + offsets[mid]) / 2.0
    d0, _, p0 = best[0]
    worst_kept = best[-1][0]
    return OffsetEstimate(
        offset_ns=offset,
        delay_ns=float(d0),
        error_ns=worst_kept / 2.0,
        at_host_ns=(p0[0] + p0[3]) / 2.0,
        probes=len(probes),
        kept=n_keep,
    )


def burst(probe: Callable[[], Probe], n: int = 64, pause_s: float = 0.0) -> List[Probe]:
    """Take n probes with `probe()` (a transport-specific exchange returning t1..t4)."""
    out = []
    for _ in range(n):
        out.append(probe())
        if pause_s:
            time.sleep(pause_s)
    return out


@dataclass(frozen=True)
class ClockModel:
    """A board's clock relative to the host over a run: offsets before and after, linear in between."""

    board: str
    before: OffsetEstimate
    after: Optional[OffsetEstimate] = None

    @property
    def drift_ppm(self) -> float:
        """Rate difference board - host in parts per million (0 without an after-run estimate)."""
        if self.after is None or self.after.at_host_ns == self.before.at_host_ns:
            return 0.0
        return 1e6 * (self.after.offset_ns - self.before.offset_ns) / (self.after.at_host_ns - self.before.at_host_ns)

    @property
    def error_ns(self) -> float:
        """Bound of the offset error in ns: the larger of the two estimates' bounds."""
        return max(self.before.error_ns, self.after.error_ns if self.after else 0.0)

    def offset_at(self, host_ns: float) -> float:
        """Board-minus-host offset at a host time (interpolated; held constant outside the run)."""
        if self.after is None:
            return self.before.offset_ns
        a, b = self.before, self.after
        if b.at_host_ns <= a.at_host_ns:
            return (a.offset_ns + b.offset_ns) / 2.0
        f = min(1.0, max(0.0, (host_ns - a.at_host_ns) / (b.at_host_ns - a.at_host_ns)))
        return a.offset_ns + f * (b.offset_ns - a.offset_ns)

    def to_host(self, board_ns: int) -> int:
        """A board timestamp on the host's clock, in integer ns (epoch ns do not fit a float's 53 bits)."""
        # offset depends on host time; one fixed-point step is enough at ppm drift rates
        guess = board_ns - self.offset_at(board_ns - self.before.offset_ns)
        return int(board_ns) - int(round(self.offset_at(guess)))

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready dict: offset at the first probe, error bound and drift (ns, ppm), and both estimates."""
        return {
            "board": self.board,
            "offset_ns": self.offset_at(self.before.at_host_ns),
            "error_ns": self.error_ns,
            "drift_ppm": self.drift_ppm,
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
        }


def synchronise(probes: Dict[str, Callable[[], Probe]], n: int = 64) -> Dict[str, OffsetEstimate]:
    """One burst per board; returns the offset estimate of each board."""
    return {board: estimate(burst(fn, n)) for board, fn in probes.items()}


def models(before: Dict[str, OffsetEstimate], after: Optional[Dict[str, OffsetEstimate]] = None) -> Dict[str, ClockModel]:
    """One ClockModel per board from the estimates before (and, for the drift, after) a run."""
    after = after or {}
    return {b: ClockModel(b, est, after.get(b)) for b, est in before.items()}
