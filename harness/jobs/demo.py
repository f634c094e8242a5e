"""`splitrack demo` (what `make demo` runs): the main job.

1. build the reference models (seeded training on digits; cached);
2. split the CNN three ways: sequential cuts, a neuron split and an input split (the five-board layout);
3. verify each plan: chained Keras vs the original, chained hls4ml emulation vs the whole-model emulation,
   accuracy on digits; print the table;
4. on a rack (by default a freshly started 5-board virtual rack, or `--boards rack.toml`): deploy the
   five-partition plan over SSH, stream the digits test set through the boards and check every answer
   against the chained emulation, bit for bit;
5. benchmark it there: end-to-end and per-hop latency beside the CPU reference, saying per partition what a
   board's compute is (on a virtual rack: this machine's CPU running a bit-exact model, not the FPGA) and,
   beside it, the FPGA compute of the RTL cosimulation when the plan has been cosimulated (`splitrack cosim`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from splitting.report import table

CNN_PLANS = {
    "cnn-sequential": dict(at=["conv2", "fc1"]),
    "cnn-neuron": dict(neurons={"fc1": 2}),
    "cnn-input": dict(inputs={"fc1": 2}),
}


class _Steps:
    """Numbers the demo's steps once, in order: 1..5 (or 1..3 without a rack), printed as [k/N]."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __call__(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {text}", flush=True)


def demo(out: Path, samples: int = 450, boards: Optional[Path] = None, rack: bool = True, frames: int = 500) -> int:
    """The main job (steps in the module docstring); returns the exit status: 0 all verified (and run and
    benchmarked on the rack), 1 a verification or a rack step failed. Plans go to `out`; `boards` is a rack
    file, or None for a 5-board virtual rack started and stopped here; rack=False stops after verification."""
    import numpy as np

    from splitting.plan import Plan
    from splitting.reference_models import MODELS, digits_data, model_inputs, reference_model
    from splitting.split import split_model, write_plan
    from splitting.verify import verify_plan

    t0 = time.time()
    out = Path(out)
    step = _Steps(5 if rack else 3)
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
        v = verify_plan(plan, data="digits", n=samples, log=lambda *a: None)
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
    code = 0 if not rack else _on_rack(out / "cnn-input", boards, frames, step)
    print(f"\ndemo finished in {time.time() - t0:.0f} s: "
          + ("all plans verified" + ("" if not rack else ", run and benchmarked on the rack") if code == 0
             else "the rack run FAILED"))
    return code


def _on_rack(plan_dir: Path, boards: Optional[Path], frames: int, step) -> int:
    """Deploy, run and benchmark one plan on a rack: the given one, or a virtual rack started (and stopped) here."""
    from splitting.errors import UserError
    from splitting.plan import Plan

    from harness.jobs.bench import bench, format_bench, save
    from harness.jobs.run import load_data, run_on_rack
    from harness.rack.rackfile import load_rack
    from harness.rack.virtual_rack import rack_down, rack_up

    def say(s: str) -> None:
        print(s, flush=True)

    rack_file = boards
    started = rack_file is None
    try:
        if started:
            rack_file = Path("build") / "demo-rack.toml"
            rack_file.parent.mkdir(exist_ok=True)
            if rack_file.exists():
                try:
                    rack_down(rack_file)  # a rack left over by an interrupted demo
                except UserError:
                    pass
            step("starting a virtual rack of 5 PYNQ-Z2 boards (real SSH servers on this machine)")
            rack_up(5, rack_file, progress=say)
        else:
            step(f"rack {rack_file}")
        rack = load_rack(rack_file)
        plan = Plan.load(plan_dir)
        say(f"      deploying {plan_dir} and streaming the digits test set through the boards")
        d = load_data("digits", plan, None)
        x, y = d.x, d.y
        run_on_rack(plan, rack, x, y, plan_dir / "run", progress=say)
        step(f"benchmark: {frames} frames (the {len(x)} test images, cycled), end-to-end and per hop, beside the "
             "CPU reference")
        doc = bench(plan, rack, frames, progress=say)
        say(format_bench(doc))
        png = save(doc, plan_dir / "bench" / "bench.json")
        say(f"wrote {plan_dir / 'bench' / 'bench.json'} and {png}")
        return 0
    except UserError as e:
        print(f"splitrack demo: error: {e}", file=sys.stderr)
        return 1
    finally:
        if started and rack_file is not None and rack_file.exists():
            try:
                say(f"stopped {rack_down(rack_file)} virtual boards of {rack_file}")
            except UserError:
                pass
