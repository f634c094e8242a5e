"""Synthetic `splitrack bench --json` documents with per-frame samples, for history, compare and dashboard tests.

A three-board chain (s0, s1, s2 on vb0, vb1, vb2); each hop's per-frame time is its level times log-normal
noise (2 %), so the end to end is their sum frame by frame, as `measure.attribute` makes it on a chain.
`slow` adds microseconds to a hop in every frame (an injected slower board); `incomplete` cuts the run
short with an error, as `bench` writes it on a fault.
"""
import numpy as np

from harness.results import history
from harness.measure.attribution import stats

HOPS = {"link host->s0": 80.0, "board s0": 150.0, "link s0->s1": 60.0, "board s1": 300.0, "link s1->s2": 60.0,
        "board s2": 120.0, "link s2->host": 70.0}
PLACEMENT = {"s0": "vb0", "s1": "vb1", "s2": "vb2"}


def bench_doc(i, commit=None, slow=None, frames=300, incomplete=None, label="digits-fc", seed=None, plan="plan0001",
              accuracy=0.95, hops=None, placement=None, machine=1.0, tuning=None, splitrack="0.1.0"):
    """Run number i (its day in March 2026). slow: {hop: extra us}; incomplete: the error text; machine: how much
    slower the whole machine was (every hop and every control times this); tuning: the plan's FIFO depths'
    hash (as bench records plan/tuning.json), None for none."""
    rng = np.random.default_rng(seed if seed is not None else 1000 + i)
    hop_levels, placement = hops or HOPS, placement or PLACEMENT
    n = frames if not incomplete else frames // 2
    reports = {}
    for mode, load in (("single", 1.0), ("stream", 1.3)):
        per = {h: v * load * machine * rng.lognormal(0, 0.02, n) + (slow or {}).get(h, 0.0)
               for h, v in hop_levels.items()}
        e2e = sum(per.values())
        reports[mode] = {
            "mode": mode, "frames": n, "in_flight": 1 if mode == "single" else 8, "rate_hz": None,
            "throughput_hz": 1e6 / float(np.median(e2e)) * (1 if mode == "single" else 4),
            "hops": list(hop_levels), "boards": dict(placement),
            "stats": {"e2e": stats(e2e * 1e3), **{h: stats(v * 1e3) for h, v in per.items()}},
            "breakdown_p50_us": {h: float(np.median(v)) for h, v in per.items()},
            "samples_us": {"e2e": e2e.round(3).tolist(), "hops": {h: v.round(3).tolist() for h, v in per.items()},
                           "critical": {h: v.round(3).tolist() for h, v in per.items()}},
        }
    doc = {
        "kind": history.BENCH_KIND, "version": 1, "time": f"2026-03-{i + 1:02d}T03:00:00+00:00", "rack": "vrack",
        "machine": "m1", "commit": commit or f"c{i:03d}", "plan_hash": plan, "plan": "plan/", "model": "digits_fc",
        "label": label, "frames": n, "placement": dict(placement),
        "boards": {b: {"kind": "virtual-pynq-z2", "pynq_version": "3.0.1", "partition": p, "timing": None}
                   for p, b in placement.items()},
        "data": {"source": "my.npz", "frames": n, "labelled": n, "note": ""},
        "reports": reports, "clocks": {},
        "payload_bytes": {h: 256 for h in hop_levels if h.startswith("link ")},
        "cpu": {"keras batch 1": {"p50": (900.0 + rng.normal(0, 5)) * machine, "p99": 1400.0 * machine},
                "keras batch 8": {"p50": (180.0 + rng.normal(0, 2)) * machine, "p99": 300.0 * machine},
                "hls4ml emulation": {"p50": (35.0 + rng.normal(0, 0.5)) * machine, "p99": 60.0 * machine}},
        # the controls of harness.measure.controls, 1-2 % run-to-run noise
        "controls": {name: {"p50": level * machine * rng.lognormal(0, 0.015), "p99": 1.5 * level * machine}
                     for name, level in (("loopback echo", 30.0), ("python loop", 500.0), ("probe vb0", 90.0),
                                         ("probe vb1", 90.0), ("probe vb2", 90.0))},
        "host": {"load_avg": [0.5, 0.4, 0.3], "cpus": 2, "seconds": 4.0, "busy_cpus": 0.9 * machine,
                 "own_cpus": 0.5, "other_cpus": 0.4 * machine},
        "splitrack": splitrack,
        "accuracy": {"rack": accuracy, "keras": accuracy + 0.005, "rack agrees with keras": 0.99},
        "complete": not incomplete,
    }
    if incomplete:
        doc["error"] = incomplete
    if tuning:
        doc["tuning"] = {"fifo_depths": {"s0->s1": 16, "s1->s2": 32}, "hash": tuning}
    return doc


def make_history(path, runs=6, slow_at=None, slow_hop="board s1", slow_us=1000.0, incomplete_at=None, start=0):
    """A history of `runs` runs; from run index slow_at on, slow_hop takes slow_us more; one run incomplete.
    start: the first run index to add (to grow a history made before)."""
    with history.History(path) as h:
        for i in range(start, runs):
            slow = {slow_hop: slow_us} if slow_at is not None and i >= slow_at else None
            inc = "board vb2 stopped answering after 150 frames" if i == incomplete_at else None
            run, rows, samples = history.parse_bench(bench_doc(i, slow=slow, incomplete=inc))
            h.add_run(run, rows, samples)
