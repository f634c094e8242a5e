"""Where the time goes: per-frame timestamps -> end-to-end, per-board dwell and per-link figures.

Each frame carries a record per partition it went through, stamped on that board's clock (t_recv,
t_compute_start, t_compute_end, t_send), plus the host's send and receive times. Board clocks are not
the host's: `clocksync` gives each board's offset, which puts every stamp on the host clock. Then

    link  src -> dst   = dst.t_recv - src.t_send          (wire, stacks, serialisation, queueing)
    dwell of a board   = t_send - t_recv                  (one clock: needs no offset)
        queue          = t_compute_start - t_recv
        compute        = t_compute_end - t_compute_start
        out            = t_send - t_compute_end

Along the critical path (the latest-arriving input of each consumer) links and dwells add up to the
end-to-end time exactly, so the breakdown is a true partition of it.
"""
from __future__ import annotations

import contextlib
import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from splitting.errors import UserError

HOST = "host"
STATS = ("p50", "p90", "p99", "max", "mean", "jitter")


class MeasureError(UserError):
    """Timestamps that cannot be attributed (a stage missing from a frame, an unknown board)."""


@dataclass
class StageStamp:
    """One partition's timestamps for one frame, on its board's clock (ns).

    t_recv: when the frame (all of it) had arrived; for a consumer of several links, `t_recv_by_src`
    may give each incoming link's arrival (else every link is taken to arrive at t_recv).
    """

    partition: str
    board: str
    t_recv: int
    t_compute_start: int
    t_compute_end: int
    t_send: int
    t_recv_by_src: Optional[Dict[str, int]] = None

    def recv_from(self, src: str) -> int:
        """Board-clock ns at which this stage received the frame's part from partition `src` (the single
        receive stamp when the stage recorded no per-source stamps)."""
        if self.t_recv_by_src and src in self.t_recv_by_src:
            return self.t_recv_by_src[src]
        return self.t_recv


@dataclass
class FrameTiming:
    """One frame: host send/receive (host clock, ns) and the stamps of every partition it visited."""

    frame: int
    t_host_send: int
    t_host_recv: int
    stages: Dict[str, StageStamp]  # partition name -> stamps


@dataclass
class Topology:
    """The links of a plan (src, dst) and which board runs each partition."""

    links: List[Tuple[str, str]]
    boards: Dict[str, str]  # partition -> board name

    @classmethod
    def from_plan(cls, plan, boards: Mapping[str, str]) -> "Topology":
        """The plan's links, with the board each partition was deployed on (`boards`: partition -> board).
        Raises MeasureError when a partition has no board."""
        missing = [p for p in plan.partitions if p not in boards]
        if missing:
            raise MeasureError(f"no board assigned to partition(s) {', '.join(missing)}: deploy the plan first")
        return cls([(c.src, c.dst) for c in plan.links], dict(boards))

    def inputs(self, dst: str) -> List[str]:
        """Partitions (or 'host') whose links feed partition `dst`."""
        return [s for s, d in self.links if d == dst]

    def hops(self) -> List[str]:
        """Hop names in flow order: links and boards interleaved as frames meet them."""
        order: List[str] = []
        seen = set()

        def visit(node: str) -> None:
            for s, d in self.links:
                if s == node:
                    name = link_name(s, d)
                    if name not in seen:
                        seen.add(name)
                        order.append(name)
            for s, d in self.links:
                if s == node and d != HOST and board_hop(d) not in seen:
                    seen.add(board_hop(d))
                    order.append(board_hop(d))
                    visit(d)

        visit(HOST)
        return order


def link_name(src: str, dst: str) -> str:
    """The hop name of the link from `src` to `dst`, as reports and the history spell it."""
    return f"link {src}->{dst}"


def board_hop(partition: str) -> str:
    """The hop name of the time a frame spends on `partition`'s board."""
    return f"board {partition}"


def stats(values_ns: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99/max/mean and jitter, in microseconds.

    jitter: mean absolute difference between consecutive frames (the un-smoothed form of RFC 3550's
    interarrival jitter), so slow drifts do not count as jitter but frame-to-frame variation does.
    """
    v = np.asarray(values_ns, dtype=np.float64) / 1e3
    if v.size == 0:
        return {k: float("nan") for k in STATS} | {"n": 0}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    jitter = float(np.mean(np.abs(np.diff(v)))) if v.size > 1 else 0.0
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max()),
            "mean": float(v.mean()), "jitter": jitter, "n": int(v.size)}


@dataclass
class Attribution:
    """Per-frame times (ns, host clock) of every hop, and the critical-path breakdown."""

    e2e: np.ndarray  # (frames,)
    hops: Dict[str, np.ndarray]  # hop name -> (frames,) time of that link / board dwell
    parts: Dict[str, Dict[str, np.ndarray]]  # board hop -> {"queue","compute","out"} (frames,)
    critical: Dict[str, np.ndarray]  # hop -> (frames,) time on the critical path (0 when off it)
    order: List[str]

    def summary(self) -> Dict[str, Dict[str, float]]:
        """stats() (microseconds) of the end-to-end latency, of every hop in flow order and of every hop's
        parts (e.g. a board's queue / compute / send)."""
        out = {"e2e": stats(self.e2e)}
        for h in self.order:
            out[h] = stats(self.hops[h])
            for k, v in self.parts.get(h, {}).items():
                out[f"{h} {k}"] = stats(v)
        return out

    def breakdown_p50(self) -> Dict[str, float]:
        """Median critical-path time per hop (us): the stacked bar of one run."""
        return {h: float(np.median(self.critical[h])) / 1e3 for h in self.order}


def attribute(frames: Sequence[FrameTiming], topo: Topology,
              to_host: Mapping[str, Callable[[float], float]]) -> Attribution:
    """Attribute each frame's end-to-end time to links and board dwells.

    to_host: board name -> function putting that board's timestamp on the host clock in integer ns
    (ClockModel.to_host).
    """
    if not frames:
        raise MeasureError("no frames came back: nothing to attribute")
    for b in set(topo.boards.values()):
        if b not in to_host:
            raise MeasureError(f"no clock offset for board {b}: run a clock probe burst before the stream")
    order = topo.hops()
    inputs = {d: topo.inputs(d) for d in list(topo.boards) + [HOST]}  # once, not a scan of the links per frame
    n = len(frames)
    hops = {h: np.zeros(n) for h in order}
    crit = {h: np.zeros(n) for h in order}
    parts = {board_hop(p): {k: np.zeros(n) for k in ("queue", "compute", "out")} for p in topo.boards}
    e2e = np.zeros(n)
    for i, f in enumerate(frames):
        e2e[i] = f.t_host_recv - f.t_host_send
        # integer ns throughout: epoch timestamps (~1.8e18) lose hundreds of ns in a float64
        send_h: Dict[str, int] = {HOST: int(f.t_host_send)}
        recv_h: Dict[Tuple[str, str], int] = {}
        for p, board in topo.boards.items():
            st = f.stages.get(p)
            if st is None:
                raise MeasureError(f"frame {f.frame} has no timestamps from partition {p}: did its board answer?")
            conv = to_host[board]
            send_h[p] = conv(st.t_send)
            for s in inputs[p]:
                recv_h[(s, p)] = conv(st.recv_from(s))
            h = board_hop(p)
            hops[h][i] = st.t_send - st.t_recv
            parts[h]["queue"][i] = st.t_compute_start - st.t_recv
            parts[h]["compute"][i] = st.t_compute_end - st.t_compute_start
            parts[h]["out"][i] = st.t_send - st.t_compute_end
        for s in inputs[HOST]:
            recv_h[(s, HOST)] = int(f.t_host_recv)
        for s, d in topo.links:
            hops[link_name(s, d)][i] = recv_h[(s, d)] - send_h[s]
        # critical path: walk back from the host along the latest-arriving input of each consumer;
        # a board's share is its send minus that arrival, so the path telescopes to exactly e2e
        node = HOST
        for _ in range(len(topo.links) + 1):
            src = max(inputs[node], key=lambda s: recv_h[(s, node)])
            t_arr = recv_h[(src, node)]
            if node != HOST:
                crit[board_hop(node)][i] = send_h[node] - t_arr
            crit[link_name(src, node)][i] = t_arr - send_h[src]
            if src == HOST:
                break
            node = src
    return Attribution(e2e, hops, parts, crit, order)


def throughput_hz(frames: Sequence[FrameTiming]) -> float:
    """Frames per second from the first send to the last receive."""
    if len(frames) < 2:
        return float("nan")
    span = max(f.t_host_recv for f in frames) - min(f.t_host_send for f in frames)
    return (len(frames) - 1) / (span / 1e9) if span > 0 else float("nan")


def report(mode: str, frames: Sequence[FrameTiming], topo: Topology, to_host: Mapping[str, Callable[[float], float]],
           rate_hz: Optional[float] = None, in_flight: int = 1) -> Dict[str, object]:
    """A JSON-able report of one run: stats per hop, critical-path breakdown, throughput."""
    att = attribute(frames, topo, to_host)
    return {
        "mode": mode,
        "frames": len(frames),
        "in_flight": in_flight,
        "rate_hz": rate_hz,
        "throughput_hz": throughput_hz(frames),
        "hops": att.order,
        "stats": att.summary(),
        "breakdown_p50_us": att.breakdown_p50(),
        "boards": dict(topo.boards),
        # per-frame figures (us, 0.001 us resolution) so that two runs can be compared statistically,
        # and the critical-path parts whose per-frame sum is the end-to-end time (history, dashboard)
        "samples_us": {"e2e": _us_list(att.e2e), "hops": {h: _us_list(att.hops[h]) for h in att.order},
                       "critical": {h: _us_list(att.critical[h]) for h in att.order}},
    }


def _us_list(ns: np.ndarray) -> List[float]:
    return [round(v, 3) for v in (np.asarray(ns, dtype=np.float64) / 1e3).tolist()]


def format_report(rep: Mapping[str, object], notes: Optional[Mapping[str, str]] = None) -> str:
    """The stats of one report as an aligned text table (us); `notes` {hop: text} is printed after a hop's row
    (bench: what a board's compute figure is)."""
    head = f"{rep['mode']}: {rep['frames']} frames, {rep['in_flight']} in flight"
    if rep.get("rate_hz"):
        head += f", offered {rep['rate_hz']:g} frames/s"
    if not math.isnan(rep["throughput_hz"]):
        head += f", throughput {rep['throughput_hz']:.0f} frames/s"
    lines = [head, f"  {'hop':34s} {'p50':>9s} {'p90':>9s} {'p99':>9s} {'max':>9s} {'jitter':>9s}   (us)"]
    notes = dict(notes or {})
    for name in rep["stats"]:
        if name.startswith("link host->") and int(rep.get("in_flight") or 1) > 1 and name not in notes:
            # its time starts when the host decides to send: in a stream, behind the frames in flight
            notes[name] = "with the frame's wait on the host behind the frames in flight (host queue)"
    for name, s in rep["stats"].items():
        lines.append(f"  {name:34s} " + " ".join(f"{s[k]:9.1f}" for k in ("p50", "p90", "p99", "max", "jitter"))
                     + (f"   {notes[name]}" if name in notes else ""))
    return "\n".join(lines)


# --- measuring a wired rack -------------------------------------------------------------------------
@contextlib.contextmanager
def shallow_idle():
    """Keep this machine's CPUs out of deep idle states while measuring (PM QoS: /dev/cpu_dma_latency at 0,
    as cyclictest and tuned's latency-performance profile do). Otherwise how fast an agent or the host wakes
    up depends on how long its CPU idled, so a slow hop also shifts the figures of hops that did not change.
    No effect on the boards of a real rack; needs root (silently does nothing without it)."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            os.write(fd, struct.pack("<i", 0))  # held as long as the file stays open
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def probe_partitions(wiring) -> Dict[str, str]:
    """board -> one partition on it (whose agent answers that board's clock probes)."""
    out: Dict[str, str] = {}
    for part, ep in wiring.endpoints.items():
        out.setdefault(ep.board, part)
    return out


def clock_offsets(pipe, wiring, probes: int = 64):
    """One burst of four-timestamp probes per board: {board: OffsetEstimate}."""
    from harness.measure import clocksync

    return {b: clocksync.estimate(clocksync.burst(lambda p=p: pipe.probe(p), probes))
            for b, p in probe_partitions(wiring).items()}


@dataclass
class RackRun:
    """What `measure_rack` gives: a report per mode, the clocks, and the outputs in input order."""

    reports: Dict[str, Dict[str, object]]
    clocks: Dict[str, Dict[str, object]]
    outputs: np.ndarray
    payload_bytes: Dict[str, int]
    untrusted: str = ""  # why the boards' stamps cannot be true (harness.measure.plausibility), '' when they can


def measure_rack(pipe, wiring, plan, x: np.ndarray, *, rate: Optional[float] = None, in_flight: int = 8,
                 single: bool = True, single_rate: Optional[float] = None, probes: int = 64, timeout: float = 10.0,
                 progress: Callable[[str], None] = lambda s: None) -> RackRun:
    """Clock probes, single frames (one in flight), a sustained stream, clock probes again; attribute both runs.

    x: the frames (batch axis first). Outputs are those of the single-frame run when there is one.
    single_rate: pace the single frames (frames/s). Worth it when runs are compared: an agent that idles
    longer between frames wakes up more slowly (CPU idle states, a VM's halted vCPU), so without pacing a
    slower hop also makes every other hop look slower. At a fixed cadence each agent idles alike.
    """
    from harness.measure import clocksync

    topo = Topology.from_plan(plan, {p: ep.board for p, ep in wiring.endpoints.items()})
    with shallow_idle() as held:
        if held:
            progress("host CPUs held out of deep idle states while measuring (/dev/cpu_dma_latency = 0)")
        progress(f"clock probes ({probes} per board) before the run")
        before = clock_offsets(pipe, wiring, probes)
        runs = {}
        if single:
            progress(f"single frames: {len(x)}, one in flight" + (f", {single_rate:g} frames/s" if single_rate else ""))
            runs["single"] = (pipe.stream(x, in_flight=1, rate=single_rate, timeout=timeout), 1, single_rate)
        progress(f"stream: {len(x)} frames, {in_flight} in flight" + (f", {rate:g} frames/s offered" if rate else ""))
        runs["stream"] = (pipe.stream(x, in_flight=in_flight, rate=rate, timeout=timeout), in_flight, rate)
        progress("clock probes after the run")
        after = clock_offsets(pipe, wiring, probes)
    from harness.measure import plausibility

    clocks = clocksync.models(before, after)
    to_host = {b: m.to_host for b, m in clocks.items()}
    timings = {mode: r.timings() for mode, (r, _, _) in runs.items()}
    untrusted = plausibility.problems([f for t in timings.values() for f in t], topo, clocks)
    # stamps that cannot be true are not attributed: the run's figures would be made of them
    reports = {} if untrusted else {mode: report(mode, timings[mode], topo, to_host, rate_hz=rt, in_flight=k)
                                    for mode, (r, k, rt) in runs.items()}
    first = runs["single" if single else "stream"][0]
    return RackRun(reports, {b: m.to_dict() for b, m in clocks.items()}, first.outputs(),
                   {link_name(c.src, c.dst): c.payload_bytes for c in plan.links}, untrusted)


def benchmark_extra_info(plan, rack_name: str, wiring, frames: Sequence[FrameTiming], before, after,
                         compute: Optional[Dict[str, dict]] = None) -> Dict[str, object]:
    """What a pytest-benchmark test puts in `benchmark.extra_info` (JSON-able, imported by `history add`):
    plan hash, rack, placement, clocks, per-hop stats and the critical-path medians of the timed frames, and
    `compute` when given: per partition what its compute is with the cosimulated FPGA compute beside it
    ({p: ComputeSource.to_dict()} of harness.measure.compute_source.compute_sources, asked while the agents run)."""
    from harness.measure import clocksync, plausibility

    clocks = clocksync.models(before, after)
    topo = Topology.from_plan(plan, {p: ep.board for p, ep in wiring.endpoints.items()})
    att = attribute(frames, topo, {b: m.to_host for b, m in clocks.items()})
    summary = att.summary()
    untrusted = plausibility.problems(frames, topo, clocks)
    return {
        **({"untrusted": untrusted} if untrusted else {}),  # `history add` keeps such a run as incomplete
        "plan_hash": plan.hash,
        "rack": rack_name,
        "placement": {p: ep.board for p, ep in wiring.endpoints.items()},
        "clocks": {b: m.to_dict() for b, m in clocks.items()},
        "hops": {h: st for h, st in summary.items() if h != "e2e"},
        "e2e_us": summary["e2e"],
        "breakdown_p50_us": att.breakdown_p50(),
        **({"compute": compute} if compute is not None else {}),
    }
