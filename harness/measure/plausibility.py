"""Whether the times boards report could be true: a lying or buggy board's stamps never become a result.

Outputs are checked bit for bit against the emulation, but the stamps that say where the time went come from
the boards alone. A board whose clock steps, whose agent is buggy or hostile, or whose clock probe answers
an hour ahead would otherwise give a dwell of -1e15 us or a link of -3.6e9 us, reported as measured. Each
frame's stamps are checked against what cannot be otherwise:

- every partition of the plan stamped the frame (a board that drops or forges its upstream records);
- order within one board (one clock): t_recv (and each incoming link's receive) <= t_compute_start <=
  t_compute_end <= t_send;
- the host's window: every stamp, once mapped to the host clock (clocksync), lies between the host's send
  and receive of that frame, give or take the clock mapping's own error bound; without a clock mapping
  (`run`), a board's dwell is at most the frame's end-to-end time;
- links run forward: a consumer's receive, mapped, is not before its producer's send by more than the two
  boards' error bounds;
- believable clocks: a board's drift between the probes before and after a run within MAX_DRIFT_PPM (a
  crystal is within +-100 ppm, and Linux slews a clock by at most 500 ppm: more is a step or a lie).

A run that fails any of these is marked untrusted with the first reasons (bench, run: exit 2, never
complete; `history add` keeps it as an incomplete run).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from splitting.plan import HOST

MAX_DRIFT_PPM = 1000.0
SLACK_NS = 100_000  # beyond the clock mapping's bound: timer granularity and the rounding of a board's clock
MAX_REASONS = 3


def _us(ns: float) -> str:
    return f"{ns / 1e3:.1f} us"


def clock_problems(clocks: Mapping[str, object]) -> List[str]:
    """Reasons the clock models (board -> clocksync.ClockModel) are not believable: an error bound that is
    not a finite non-negative number, or an offset that moved between the probes before and after the run by
    more than MAX_DRIFT_PPM of the time between them allows, beyond what the two estimates' own error bounds
    allow (a short run on a busy machine has wide bounds: its apparent drift is not held against it)."""
    out = []
    for b, m in clocks.items():
        err = float(m.error_ns)
        if not err == err or err < 0 or err == float("inf"):
            out.append(f"board {b}: clock error bound {err} is not a measurement")
            continue
        before, after = m.before, m.after
        if after is None or after.at_host_ns <= before.at_host_ns:
            continue
        span = after.at_host_ns - before.at_host_ns
        moved = abs(after.offset_ns - before.offset_ns) - before.error_ns - after.error_ns - SLACK_NS
        if moved > MAX_DRIFT_PPM * 1e-6 * span:
            out.append(f"board {b}: its clock moved {float(m.drift_ppm):+.0f} ppm against the host's between the "
                       f"probes before and after the run (at most {MAX_DRIFT_PPM:.0f} ppm, beyond the probes' own "
                       "error, is believable: the clock stepped, or the probes lie)")
    return out


def frame_problems(f, topo, clocks: Optional[Mapping[str, object]] = None) -> List[str]:
    """Reasons the stamps of one frame (attribution.FrameTiming) cannot be true (see the module docstring); []
    when they can. topo: attribution.Topology; clocks: board -> clocksync.ClockModel (to_host, error_ns);
    None checks what needs no mapping."""
    out: List[str] = []
    e2e = f.t_host_recv - f.t_host_send
    if e2e <= 0:
        out.append(f"frame {f.frame}: the host received it {_us(-e2e)} before sending it")
    missing = [p for p in topo.boards if p not in f.stages]
    if missing:  # every partition on the frame's paths stamps it (records per frame are the plan's)
        out.append(f"frame {f.frame}: no stamps from {', '.join(missing)}")
    sent: Dict[str, int] = {}
    tol: Dict[str, float] = {HOST: 0.0}
    for p, st in f.stages.items():
        where = f"frame {f.frame}, {p} on {st.board or '?'}"
        order = [("t_recv", st.t_recv)] + [(f"receive from {s}", t) for s, t in (st.t_recv_by_src or {}).items()]
        for name, t in order:
            if t > st.t_compute_start:
                out.append(f"{where}: {name} is {_us(t - st.t_compute_start)} after the compute started")
        if not st.t_compute_start <= st.t_compute_end <= st.t_send:
            out.append(f"{where}: its stamps are out of order (compute {_us(st.t_compute_end - st.t_compute_start)}, "
                       f"out {_us(st.t_send - st.t_compute_end)})")
        dwell = st.t_send - st.t_recv
        if clocks is None:
            if dwell > e2e + SLACK_NS + 1e-3 * e2e:
                out.append(f"{where}: it stayed on the board {_us(dwell)}, longer than the frame's end to end "
                           f"({_us(e2e)})")
            continue
        m = clocks.get(st.board)
        if m is None:
            out.append(f"{where}: no clock mapping for its board")
            continue
        tol[p] = 2 * float(m.error_ns) + SLACK_NS
        lo, hi = f.t_host_send - tol[p], f.t_host_recv + tol[p]
        for name, t in [("t_recv", st.t_recv), ("t_send", st.t_send)]:
            h = m.to_host(t)
            if not lo <= h <= hi:
                off = h - f.t_host_send if h < lo else h - f.t_host_recv
                out.append(f"{where}: {name}, on the host's clock, is {_us(off)} "
                           f"{'before the host sent' if h < lo else 'after the host received'} the frame "
                           f"(the clock mapping is good to {_us(float(m.error_ns))})")
        sent[p] = m.to_host(st.t_send)
    if clocks is not None:
        sent[HOST] = f.t_host_send
        for s, d in topo.links:
            if d == HOST or s not in sent or d not in f.stages:
                continue
            st = f.stages[d]
            m = clocks.get(st.board)
            if m is None:
                continue
            link = m.to_host(st.recv_from(s)) - sent[s]
            if link < -(tol.get(s, 0.0) + tol.get(d, 0.0)):
                out.append(f"frame {f.frame}: link {s}->{d} took {_us(link)} (received before it was sent)")
    return out


def problems(frames: Sequence, topo, clocks: Optional[Mapping[str, object]] = None) -> str:
    """'' when every frame's stamps (and the clocks) are plausible, else one line: how many frames fail and
    the first reasons, for the run's "untrusted" field."""
    bad = clock_problems(clocks or {})
    n_bad = 0
    for f in frames:
        got = frame_problems(f, topo, clocks)
        if got:
            n_bad += 1
            if len(bad) < MAX_REASONS:
                bad.extend(got[:MAX_REASONS - len(bad)])
    if not bad:
        return ""
    head = f"{n_bad} of {len(frames)} frames have impossible board stamps" if n_bad else "implausible board clocks"
    return f"untrusted: {head}: " + "; ".join(bad[:MAX_REASONS])
