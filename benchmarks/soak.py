"""Soak: stream frames through local agents for a long time and sample every agent's memory (RSS).

    .venv/bin/python benchmarks/soak.py --minutes 30        # the README's soak: the FC model split three ways
    .venv/bin/python benchmarks/soak.py --minutes 2 --plan identity            # no hls4ml build needed
    .venv/bin/python benchmarks/soak.py --minutes 5 --plan plans/cnn-input      # any plan folder

`--plan fc` (default) is the digits FC model cut after fc1, fc2 split by neurons into two parts, fc3 by
inputs into two partial sums and their join (six agents on their hls4ml emulation libraries; the plan is
made once in the user cache). `--plan identity` is a chain with a neuron split and a concatenating join
(s0 -> n0, n1 -> join -> s1 -> s2) whose agents decode and encode every frame (passthrough). Frames stream
in rounds of `--frames` (a new Pipeline, i.e. a new session, every `--session-every` rounds: sessions are
what a day of runs opens), every output compared with the first round's. Every `--sample` seconds each
agent's VmRSS is read from /proc. The table gives per agent the RSS at the end of warm-up (the first
`--warmup` fraction), the highest RSS of the first and of the second half after warm-up, their difference
(a leak keeps raising the peaks; bounded per-frame state only swings between them), and the slope of a
least-squares line through the samples after warm-up (KiB per minute); a PNG plots every agent's RSS.
Results in benchmarks/out/soak.{txt,png}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.measure.stream import Pipeline  # noqa: E402
from harness.rack.local_rack import LocalRack  # noqa: E402

sys.path.insert(0, str(ROOT / "sim_tests"))
from identity_plan import identity_plan  # noqa: E402  (the tests' plan helper)

OUT = ROOT / "benchmarks" / "out"


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def slope_kib_per_min(t_s: np.ndarray, kib: np.ndarray) -> float:
    """Least-squares slope of kib over t_s, in KiB per minute (0 for fewer than 3 samples)."""
    if len(t_s) < 3:
        return 0.0
    return float(np.polyfit(t_s / 60.0, kib, 1)[0])


def fc_plan():
    """The digits FC model cut after fc1, fc2 split by neurons (2), fc3 by inputs (2) with its join: made once
    in the user cache, its hls4ml projects compiled (once) before the clock starts."""
    from splitting import hls
    from splitting.plan import Plan, PlanError
    from splitting.user_cache import cache_root

    folder = cache_root() / "soak" / "fc-3way"
    try:
        plan = Plan.load(folder)
    except PlanError:
        from splitting.reference_models import reference_model
        from splitting.split import split_model, write_plan

        p, models = split_model(reference_model("fc"), at=["fc1"], neurons={"fc2": 2}, inputs={"fc3": 2})
        write_plan(p, models, folder)
        plan = Plan.load(folder)
    for q in plan.ordered_partitions():
        hls.project_dir(plan, q.name)
    return plan


def _load(folder):
    from splitting.plan import Plan

    return Plan.load(folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--plan", default="fc", help="fc (default), identity, or a plan folder (emulation backends)")
    ap.add_argument("--frames", type=int, default=500, help="frames per round")
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--session-every", type=int, default=10, help="rounds per Pipeline (session)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run counted as warm-up")
    ap.add_argument("--out", type=Path, default=OUT / "soak")
    a = ap.parse_args(argv)

    if a.plan == "identity":
        plan = identity_plan(3, shape=(64,), fan=2)
        backends = {p: {"kind": "passthrough", "decode": True} for p in plan.partitions}
    else:
        plan, backends = (fc_plan() if a.plan == "fc" else _load(a.plan)), "emulation"
    rng = np.random.default_rng(0)
    if a.plan == "identity":
        x = rng.integers(-2 ** 10, 2 ** 10, (a.frames, 64)).astype(np.float64) / 2 ** 10  # on ap_fixed<16,6>'s grid
    else:
        x = rng.uniform(-1, 1, (a.frames,) + tuple(plan.model["input_shape"])).astype(np.float32)
    end = time.monotonic() + a.minutes * 60
    samples = []  # (t, {partition: KiB})
    frames = rounds = 0
    with tempfile.TemporaryDirectory(prefix="splitrack-soak-") as tmp, LocalRack(Path(tmp)) as rack:
        wiring = rack.start(plan, backends, in_flight=a.in_flight)
        pids = {p: ag.proc.pid for p, ag in rack.agents.items()}
        t0 = time.monotonic()
        next_sample = t0
        pipe = None
        expect = None
        try:
            while time.monotonic() < end:
                if pipe is None or rounds % a.session_every == 0:
                    if pipe is not None:
                        pipe.close()
                    pipe = Pipeline(wiring)
                res = pipe.stream(x, in_flight=a.in_flight, timeout=30.0)
                out = res.outputs()
                if expect is None:
                    expect = out
                elif not np.array_equal(out, expect):
                    print("outputs changed between rounds: the agents are not deterministic", file=sys.stderr)
                    return 1
                frames += len(x)
                rounds += 1
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - t0, {p: rss_kib(pid) for p, pid in pids.items()}))
                    next_sample += a.sample
                    done = (now - t0) / (end - t0)
                    print(f"  {now - t0:6.0f} s ({100 * done:3.0f} %): {frames} frames, RSS KiB "
                          + " ".join(f"{p}={k}" for p, k in samples[-1][1].items()), flush=True)
        finally:
            if pipe is not None:
                pipe.close()
    t = np.array([s[0] for s in samples])
    warm = t >= a.warmup * t[-1]
    what = {"identity": "identity s0 -> n0,n1 -> join -> s1 -> s2", "fc": "FC cut after fc1, fc2 neuron-split, "
            "fc3 input-split + join"}.get(a.plan, a.plan)
    lines = [f"soak: {a.minutes:g} min, {frames} frames in {rounds} rounds of {a.frames} "
             f"({(rounds - 1) // a.session_every + 1} sessions), plan {what}",
             f"RSS per agent (KiB), samples every {a.sample:g} s; warm-up: the first {100 * a.warmup:.0f} %",
             f"{'agent':>8} {'start':>8} {'warm':>8} {'peak 1st':>9} {'peak 2nd':>9} {'2nd-1st':>8} {'end':>8} "
             f"{'slope KiB/min':>14}"]
    for p in pids:
        k = np.array([s[1][p] for s in samples], dtype=float)
        kw, tw = k[warm], t[warm]
        half = len(kw) // 2
        p1, p2 = kw[:max(half, 1)].max(), kw[half:].max()
        lines.append(f"{p:>8} {k[0]:8.0f} {kw[0]:8.0f} {p1:9.0f} {p2:9.0f} {p2 - p1:+8.0f} {k[-1]:8.0f} "
                     f"{slope_kib_per_min(tw, kw):14.1f}")
    text = "\n".join(lines)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".txt").write_text(text + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for p in pids:
        ax.plot(t / 60, [s[1][p] / 1024 for s in samples], label=p)
    ax.axvline(a.warmup * t[-1] / 60, color="k", lw=0.5, ls="--")
    ax.set_xlabel("minutes")
    ax.set_ylabel("agent RSS (MiB)")
    ax.set_title(f"soak: {frames} frames, {rounds} rounds (dashed: end of warm-up)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=100)
    print(f"wrote {a.out.with_suffix('.txt')} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
