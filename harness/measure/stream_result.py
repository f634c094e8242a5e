"""What a stream of frames returns: each frame that came back (`FrameResult`: output, host times, every
partition's timestamp records), the whole stream (`StreamResult`), and a paced stream's schedule
(`SendSchedule`). `harness.measure.stream.Pipeline.stream` makes them; attribution reads them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from harness.rack.wiring import Wiring
from splitting.errors import UserError

Record = Tuple[int, int, int, int, int, int, int, int]  # stage, partition id, source id, flags, 4 x ns


class StreamError(UserError):
    """Frames that did not come back; `.result` holds everything that did."""

    def __init__(self, message: str, result: "StreamResult"):
        super().__init__(message)
        self.result = result


@dataclass
class FrameResult:
    """One frame that came back: its id, the output array (the model's output shape), host send and receive
    times (time.time_ns, ns) and the timestamp records of every partition it passed (board clocks, ns)."""

    frame: int
    output: np.ndarray
    t_send: int  # host time.time_ns() when the first part left
    t_recv: int  # host time.time_ns() when the last part of the output arrived
    records: List[Record]  # one per (partition, incoming link), board clocks

    @property
    def latency_ns(self) -> int:
        """End-to-end latency on the host clock: t_recv - t_send, in ns."""
        return self.t_recv - self.t_send


@dataclass(frozen=True)
class SendSchedule:
    """A paced stream's schedule, fixed before its first frame leaves: input i is sent no earlier than
    `send_ns(i)` = origin_ns + i / rate seconds, every time from the one origin (a late frame does not push
    the next ones back). origin_ns is in the clock of FrameResult.t_send (host time.time_ns()); the pacer
    waits on the monotonic clock from origin_mono_ns, read just after origin_ns, so a frame's t_send is never
    below its send_ns (the two clocks advance together; only a step of the wall clock could break that)."""

    rate: float  # frames/s
    origin_ns: int
    origin_mono_ns: int

    @classmethod
    def start_now(cls, rate: float) -> "SendSchedule":
        """A schedule at `rate` frames/s whose origin is now (time.time_ns, then time.perf_counter_ns)."""
        origin_ns = time.time_ns()
        return cls(rate, origin_ns, time.perf_counter_ns())

    def offset_ns(self, i: int) -> int:
        """How long after the origin input `i` is due: i / rate seconds, in ns (int)."""
        return int(i * 1e9 / self.rate)

    def send_ns(self, i: int) -> int:
        """When input i is due to leave, in the clock of FrameResult.t_send (ns)."""
        return self.origin_ns + self.offset_ns(i)

    def wait_for(self, i: int) -> None:
        """Return once input i is due (never before; late if the machine is busy)."""
        due = self.origin_mono_ns + self.offset_ns(i)
        while True:
            left = due - time.perf_counter_ns()
            if left <= 0:
                return
            time.sleep(left / 1e9)


@dataclass
class StreamResult:
    """What a stream returned: the frames that came back by id, the errors reported, the host times (ns) of
    the first send and last receive, and the send schedule when paced."""

    wiring: Wiring
    frame_ids: List[int]  # ids of the frames sent, in order (input i -> frame_ids[i])
    frames: Dict[int, FrameResult] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)
    t_start: int = 0
    t_end: int = 0
    schedule: Optional[SendSchedule] = None  # a paced stream's (rate given): when each input was due to leave
    _stamps: Dict[int, Dict[str, Dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        """True when no error was reported and every frame sent came back."""
        return not self.errors and all(f in self.frames for f in self.frame_ids)

    def outputs(self) -> np.ndarray:
        """Outputs in input order, (n, *output_shape); raises if a frame is missing."""
        missing = [f for f in self.frame_ids if f not in self.frames]
        if missing:
            raise StreamError(f"{len(missing)} frame(s) missing (first: {missing[0]})", self)
        return np.stack([self.frames[f].output for f in self.frame_ids])

    def latencies_ns(self) -> np.ndarray:
        """End-to-end latencies (ns, int64) of the frames that came back, in input order: shape (frames back,)."""
        return np.array([self.frames[f].latency_ns for f in self.frame_ids if f in self.frames], dtype=np.int64)

    @property
    def throughput(self) -> float:
        """Frames per second over the whole run (first send to last receive)."""
        got = [self.frames[f] for f in self.frame_ids if f in self.frames]
        if len(got) < 2:
            return float("nan")
        span = max(r.t_recv for r in got) - min(r.t_send for r in got)
        return len(got) / (span / 1e9)

    def stamps(self, frame: int) -> Dict[str, Dict[str, Any]]:
        """partition -> {board, stage, t_recv (last part), t_recv_by_src, t_compute_start, t_compute_end, t_send}
        (worked out once per frame; do not change what it returns)."""
        known = self._stamps.get(frame)
        if known is not None:
            return known
        out: Dict[str, Dict[str, Any]] = {}
        self._stamps[frame] = out
        w = self.wiring
        for stage, pid, src, _flags, t_r, t_cs, t_ce, t_s in self.frames[frame].records:
            name = w.partition_name(pid)
            d = out.setdefault(name, {"board": w.endpoints[name].board if name in w.endpoints else "", "stage": stage,
                                      "t_recv": t_r, "t_recv_by_src": {}, "t_compute_start": t_cs,
                                      "t_compute_end": t_ce, "t_send": t_s})
            d["t_recv"] = max(d["t_recv"], t_r)
            d["t_recv_by_src"][w.partition_name(src)] = t_r
        return out

    def timings(self):
        """Per-frame timings as `harness.measure.attribution.FrameTiming` (board clocks; clocksync maps them to the host's)."""
        from harness.measure.attribution import FrameTiming, StageStamp

        out = []
        for f in self.frame_ids:
            if f not in self.frames:
                continue
            r = self.frames[f]
            st = {name: StageStamp(partition=name, board=d["board"], t_recv=d["t_recv"],
                                   t_compute_start=d["t_compute_start"], t_compute_end=d["t_compute_end"],
                                   t_send=d["t_send"], t_recv_by_src=dict(d["t_recv_by_src"]))
                  for name, d in self.stamps(f).items()}
            out.append(FrameTiming(frame=f, t_host_send=r.t_send, t_host_recv=r.t_recv, stages=st))
        return out
