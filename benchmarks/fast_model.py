"""A virtual board's compute: the fast bit-exact model (harness/agent/fast_model.py) against hls4ml's C simulation.

    .venv/bin/python benchmarks/fast_model.py [--partition s0] [--frames 200]

The reference CNN split as the demo's "cnn-sequential" plan (`--at conv2,fc1`); partition s0 holds conv1 and
conv2. Both run the same digits test frames; the outputs must be equal bit for bit or no figure is printed.
Timing is interleaved in blocks of 16 frames (16 emulation frames, then 16 fast frames, ...) so all see the
same machine load while each runs its model frame after frame as an agent does (one frame each in turn would
time every fast frame with the caches the 4 ms emulation call just filled: 1.5-2x slower): per frame p50 of
the emulation library (one call per frame, as the agent does), of the fast model on one frame with its
compiled kernel (harness/agent/fast_kernel.py: what deploy gives a virtual board) and without
it (numpy only: where no C compiler works), and with the kernel on a batch of 64 (per frame). BLAS runs on
one thread, as on a virtual board. Target (issue 15): the fast model >= 20x the emulation.
Prints a table; writes fast_model.json in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # one thread, as on a virtual board (virtual_board.env)
    os.environ.setdefault(_k, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partition", default="s0")
    ap.add_argument("--frames", type=int, default=200, help="timed frames per variant")
    ap.add_argument("--plan-dir", type=Path, default=ROOT / "build" / "bench-cnn-sequential")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    a = ap.parse_args(argv)

    from benchmarks.cosim_speed import cnn_plan
    from splitting import hls
    from splitting.reference_models import digits_data, model_inputs

    from harness.agent.fast_kernel import Kernel
    from harness.rack.fast_build import build_kernel, model_of

    plan = cnn_plan(a.plan_dir)
    print(f"plan {a.plan_dir} (cnn-sequential), partition {a.partition}", flush=True)
    x = model_inputs("cnn", digits_data()[2])
    for name in [p.name for p in plan.ordered_partitions()]:  # its real input: the emulation chain up to it
        if name == a.partition:
            break
        x = hls.emulation(plan, name).predict(x)
    emu = hls.emulation(plan, a.partition)
    lib = build_kernel()
    if lib is None:
        print("no C compiler works here: the kernel row cannot be measured", file=sys.stderr)
        return 2
    fm = model_of(plan, a.partition, Kernel(lib))
    fm_np = model_of(plan, a.partition)
    print(f"layers: {fm.modes} (numpy only: {fm_np.modes})")
    theirs = emu.predict(x)
    bad = 0
    for m in (fm, fm_np):
        ours = m.run(x)
        bad += int(np.count_nonzero(ours != theirs.reshape(ours.shape)))
    print(f"bit exactness on {len(x)} digits frames: {bad} of {2 * ours.size} values differ", flush=True)
    if bad:
        print("the fast model is not bit exact here: no timing is reported", file=sys.stderr)
        return 2

    rng = np.random.RandomState(0)
    batch = 64
    t_emu, t_one, t_np, t_batch = [], [], [], []
    block = 16

    def timed(fn, frames, out):
        for f in frames:
            t0 = time.perf_counter_ns()
            fn(f)
            out.append(time.perf_counter_ns() - t0)

    for i in range(0, a.frames, block):
        fs = x[rng.randint(len(x), size=min(block, a.frames - i))]
        timed(emu.run, fs, t_emu)
        timed(lambda f: fm.run(f[None]), fs, t_one)
        timed(lambda f: fm_np.run(f[None]), fs, t_np)
        b = x[rng.randint(len(x), size=batch)]
        t3 = time.perf_counter_ns()
        fm.run(b)
        t_batch.append((time.perf_counter_ns() - t3) / batch)
        if (i + block) % 48 == 0 or i + block >= a.frames:
            print(f"  {min(i + block, a.frames)}/{a.frames} frames", flush=True)
    p50 = {k: float(np.median(v)) / 1e3 for k, v in (("emulation", t_emu), ("fast, 1 frame", t_one),
                                                      ("fast numpy only, 1 frame", t_np),
                                                      ("fast, batch of 64", t_batch))}
    print(f"\n{'per frame, ' + a.partition:28s} {'p50 us':>10s} {'speed-up vs emulation':>22s}")
    for k, v in p50.items():
        print(f"{k:28s} {v:10.1f} {p50['emulation'] / v:21.1f}x")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "fast_model.json").write_text(json.dumps({"partition": a.partition, "frames": a.frames,
                                                       "p50_us": p50, "exact_values": 2 * int(ours.size),
                                                       "modes": fm.modes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
