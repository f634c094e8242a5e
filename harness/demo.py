"""`splitrack demo` (what `make demo` runs): the main job.

1. build the reference models (seeded training on digits; cached);
2. split the CNN three ways: sequential cuts, a neuron split and an input split (the five-board layout);
3. verify each plan: chained Keras vs the original, chained hls4ml emulation vs the whole-model emulation,
   accuracy on digits; print the table.
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


def run(args) -> int:
    import numpy as np

    from splitting.plan import Plan
    from splitting.reference import MODELS, digits_data, model_inputs, reference_model
    from splitting.split import split_model, write_plan
    from splitting.verify import verify_plan

    t0 = time.time()
    out = Path(args.out)
    print("[1/3] reference models (seeded training on scikit-learn digits, cached)", flush=True)
    _, _, x_te, y_te = digits_data()
    models = {}
    for name in MODELS:
        models[name] = reference_model(name, verbose=True)
        acc = float(np.mean(np.argmax(models[name].predict(model_inputs(name, x_te), verbose=0), 1) == y_te))
        print(f"      {name}: {models[name].count_params()} parameters, Keras test accuracy {100 * acc:.2f} %", flush=True)
    print("[2/3] splitting the CNN three ways", flush=True)
    plans = {}
    for i, (pname, kw) in enumerate(CNN_PLANS.items(), 1):
        plan, sub = split_model(models["cnn"], **kw)
        write_plan(plan, sub, out / pname)
        plans[pname] = Plan.load(out / pname)
        print(f"      {pname}: {kw} -> {len(plan.partitions)} partitions in {len(plan.stages)} stages "
              f"({out / pname})", flush=True)
    print("[3/3] verifying (hls4ml projects compile once, then come from the cache)", flush=True)
    rows, ok = [], True
    for i, (pname, plan) in enumerate(plans.items(), 1):
        print(f"      [{i}/{len(plans)}] {pname}", flush=True)
        v = verify_plan(plan, data="digits", n=args.samples, log=lambda *a: None)
        ok &= v.ok
        rows.append([pname, v.partitions, v.stages, f"{v.float_max_abs_err:.2g}", f"{v.hls_chain_max_abs_err:.2g}",
                     "yes" if v.hls_bit_exact else "no", f"{100 * v.accuracy_keras:.2f}",
                     f"{100 * v.accuracy_split_hls:.2f}", "PASS" if v.ok else "FAIL"])
    print()
    print(table(["plan", "partitions", "stages", "float err", "hls chain err", "bit exact", "acc keras %",
                 "acc split hls %", "verify"], rows))
    print(f"\ndemo finished in {time.time() - t0:.0f} s: {'all plans verified' if ok else 'VERIFICATION FAILED'}")
    return 0 if ok else 1
