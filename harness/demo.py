"""`splitrack demo` (what `make demo` runs): the main job.

1. build the reference models (seeded training on digits; cached);
2. split the CNN three ways: sequential cuts, a neuron split and an input split (the five-board layout);
3. verify each plan: chained Keras vs the original, chained hls4ml emulation vs the whole-model emulation,
   accuracy on digits; print the table;
4. on a rack (by default a freshly started 5-board virtual rack, or `--boards rack.toml`): deploy the
   five-partition plan over SSH, stream the digits test set through the boards and check every answer
   against the chained emulation, bit for bit;
5. benchmark it there: end-to-end and per-hop latency beside the CPU reference.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from splitting.report import table

CNN_PLANS = {
    "cnn-sequential": dict(at=["conv2", "fc1"]),
    "cnn-neuron": dict(neurons={"fc1": 2}),
    "cnn-input": dict(inputs={"fc1": 2}),
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="plans", help="folder for the plans (default plans/)")
    p.add_argument("-n", "--samples", type=int, default=450, help="digits test samples to verify on (max 450)")
    p.add_argument("--boards", default=None, help="rack file to run on (default: start a 5-board virtual rack)")
    p.add_argument("--no-rack", action="store_true", help="stop after verification (no deployment)")
    p.add_argument("--frames", type=int, default=500, help="frames for the rack benchmark (default 500)")


class _Steps:
    """Numbers the demo's steps once, in order: [1/5] .. [5/5] (or [1/3] .. [3/3] with --no-rack)."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __call__(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {text}", flush=True)


def run(args) -> int:
    import numpy as np

    from splitting.plan import Plan
    from splitting.reference import MODELS, digits_data, model_inputs, reference_model
    from splitting.split import split_model, write_plan
    from splitting.verify import verify_plan

    t0 = time.time()
    out = Path(args.out)
    step = _Steps(3 if args.no_rack else 5)
    step("reference models (seeded training on scikit-learn digits, cached)")
    _, _, x_te, y_te = digits_data()
    models = {}
    for name in MODELS:
        models[name] = reference_model(name, verbose=True)
        acc = float(np.mean(np.argmax(models[name].predict(model_inputs(name, x_te), verbose=0), 1) == y_te))
        print(f"      {name}: {models[name].count_params()} parameters, Keras test accuracy {100 * acc:.2f} %", flush=True)
    step("splitting the CNN three ways")
    plans = {}
    for i, (pname, kw) in enumerate(CNN_PLANS.items(), 1):
        plan, sub = split_model(models["cnn"], **kw)
        write_plan(plan, sub, out / pname)
        plans[pname] = Plan.load(out / pname)
        print(f"      {pname}: {kw} -> {len(plan.partitions)} partitions in {len(plan.stages)} stages "
              f"({out / pname})", flush=True)
    step("verifying (hls4ml projects compile once, then come from the cache)")
    rows, ok = [], True
    for i, (pname, plan) in enumerate(plans.items(), 1):
        print(f"      {pname}", flush=True)
        v = verify_plan(plan, data="digits", n=args.samples, log=lambda *a: None)
        ok &= v.ok
        rows.append([pname, v.partitions, v.stages, f"{v.float_max_abs_err:.2g}", f"{v.hls_chain_max_abs_err:.2g}",
                     "yes" if v.hls_bit_exact else "no", f"{100 * v.accuracy_keras:.2f}",
                     f"{100 * v.accuracy_split_hls:.2f}", "PASS" if v.ok else "FAIL"])
    print()
    print(table(["plan", "partitions", "stages", "float err", "hls chain err", "bit exact", "acc keras %",
                 "acc split hls %", "verify"], rows))
    if not ok:
        print(f"\ndemo stopped after {time.time() - t0:.0f} s: VERIFICATION FAILED")
        return 1
    code = 0 if args.no_rack else _on_rack(args, out / "cnn-input", step)
    print(f"\ndemo finished in {time.time() - t0:.0f} s: "
          + ("all plans verified" + ("" if args.no_rack else ", run and benchmarked on the rack") if code == 0
             else "the rack run FAILED"))
    return code


def _on_rack(args, plan_dir: Path, step) -> int:
    """Deploy, run and benchmark one plan on a rack: the given one, or a virtual rack started (and stopped) here."""
    from .cli import main

    rack = args.boards
    started = rack is None
    if started:
        rack = str(Path("build") / "demo-rack.toml")
        Path("build").mkdir(exist_ok=True)
        if Path(rack).exists():  # a rack left over by an interrupted demo: stop it (a stopped one says nothing)
            from splitting.errors import UserError

            from .virtual_rack import rack_down

            try:
                if rack_down(rack):
                    print(f"      stopped the virtual rack an interrupted demo left running ({rack})", flush=True)
            except UserError as e:
                print(f"      {e}", flush=True)
        step("starting a virtual rack of 5 PYNQ-Z2 boards (real SSH servers on this machine)")
        if main(["rack", "up", "--boards", "5", "--out", rack]) != 0:
            return 1
    else:
        step(f"rack {rack}")
    try:
        print(f"      deploying {plan_dir} and streaming the digits test set through the boards", flush=True)
        code = main(["run", str(plan_dir), "--boards", rack, "--data", "digits"])
        if code == 0:
            step(f"benchmark: {args.frames} frames, end-to-end and per hop, beside the CPU reference")
            code = main(["bench", str(plan_dir), "--boards", rack, "--frames", str(args.frames),
                         "--json", str(plan_dir / "bench" / "bench.json")])
        return code
    finally:
        if started:
            main(["rack", "down", rack])
