"""`splitrack bench`: latency per hop of a plan on a rack, beside the CPU reference, in one run.

    splitrack bench plan/ --boards rack.toml --frames 2000 [--rate R] [--json out.json]

Deploys the plan (nothing is uploaded when the boards already carry it), probes every board's clock,
sends the frames one at a time (paced, single-frame latency), then as a sustained stream (several in
flight, optionally at R frames/s: latency under load, throughput), probes the clocks again, attributes
each frame's time to links and boards, and measures Keras and the hls4ml emulation on this CPU. With
--json the whole result goes to a file that `splitrack history add` imports; a PNG of the per-hop
breakdown is written beside it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from splitting.errors import UserError

from harness.results import history
from harness.measure import attribution as measure

DEFAULT_SINGLE_RATE = 200.0  # frames/s for the single-frame run: see measure.measure_rack(single_rate)


def bench_data(plan, frames: int, data: str = "auto") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """`frames` inputs for the plan (cycling through the data set) and labels of one pass, when labelled.

    data: "digits" (scikit-learn digits test set, labelled), "random" (uniform [0, 1], no labels), or
    "auto" (digits when the model takes 64 values, else random)."""
    shape = tuple(plan.model["input_shape"])
    n_in = int(np.prod(shape))
    if data == "auto":
        data = "digits" if n_in == 64 else "random"
    if data == "digits":
        if n_in != 64:
            raise UserError(f"--data digits needs a model with 64 inputs (8x8 images); this one takes {shape}: "
                            "use --data random")
        from splitting.reference import digits_data

        _, _, x_te, y_te = digits_data()
        x = x_te.reshape((len(x_te),) + shape)
        reps = -(-frames // len(x))
        return np.concatenate([x] * reps)[:frames], y_te[: min(frames, len(y_te))]
    if data == "random":
        return np.random.default_rng(0).uniform(0, 1, (frames,) + shape).astype(np.float32), None
    raise UserError(f"--data {data!r}: choose digits, random or auto")


def bench(plan, rack, frames: int = 2000, rate: Optional[float] = None, in_flight: int = 8,
          single_rate: Optional[float] = DEFAULT_SINGLE_RATE, data: str = "auto", cpu: bool = True,
          progress: Callable[[str], None] = print, deployment=None) -> Dict:
    """Deploy (unless `deployment` is given), measure, and return the bench document (the --json content)."""
    from harness.measure import cpu_reference
    from harness.rack.deploy import deploy
    from harness.measure.stream import Pipeline

    if frames < 2:
        raise UserError(f"--frames {frames}: give at least 2 frames")
    if in_flight < 1:
        raise UserError(f"--in-flight {in_flight}: at least 1")
    x, labels = bench_data(plan, frames, data)
    if deployment is None:
        deployment = deploy(plan, rack, progress=progress)
    wiring = deployment.wiring
    time = history.now_iso()
    with Pipeline(wiring) as pipe:
        run = measure.measure_rack(pipe, wiring, plan, x, rate=rate, in_flight=in_flight, single_rate=single_rate,
                                   progress=progress)
    doc = {
        "kind": history.BENCH_KIND, "version": 1, "time": time, "rack": rack.name, "machine": history.machine_name(),
        "commit": history.current_commit(Path(__file__).resolve().parents[1]), "plan_hash": plan.hash,
        "plan": str(plan.root) if plan.root else None, "model": plan.model.get("name"), "frames": frames,
        "placement": {p: b.name for p, b in deployment.boards.items()},
        "reports": run.reports, "clocks": run.clocks, "payload_bytes": run.payload_bytes, "cpu": {}, "accuracy": {},
    }
    if cpu:
        ref = cpu_reference.reference(plan, x, in_flight, run.outputs, labels, progress=progress)
        doc["cpu"], doc["accuracy"] = ref["cpu"], ref["accuracy"]
    return doc


def format_bench(doc: Dict) -> str:
    from harness.measure.cpu_reference import format_reference

    out = [f"plan {doc['plan_hash']} ({doc.get('model')}) on rack {doc['rack']}: "
           + ", ".join(f"{p} on {b}" for p, b in doc["placement"].items())]
    out.append("clocks (board - host): " + ", ".join(
        f"{b} {c['offset_ns'] / 1e3:+.1f} us (+-{c['error_ns'] / 1e3:.1f}, drift {c['drift_ppm']:+.2f} ppm)"
        for b, c in doc["clocks"].items()))
    for rep in doc["reports"].values():
        out.append(measure.format_report(rep))
    if doc["cpu"]:
        out.append(format_reference({"cpu": doc["cpu"], "accuracy": doc["accuracy"]}, doc["reports"]))
    return "\n".join(out)


def plot(doc: Dict, path: Path) -> Path:
    """PNG: per-hop median breakdown of each mode (stacked), and the end-to-end latency beside the CPU's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    modes = list(doc["reports"])
    hops = doc["reports"][modes[0]]["hops"]
    cmap = plt.get_cmap("tab20")
    for i, mode in enumerate(modes):
        base = 0.0
        for k, h in enumerate(hops):
            v = doc["reports"][mode]["breakdown_p50_us"].get(h, 0.0)
            ax1.bar(i, v, bottom=base, color=cmap(k % 20), label=h if i == 0 else None)
            base += v
    ax1.set_xticks(range(len(modes)), modes)
    ax1.set_ylabel("median time on the critical path (us)")
    ax1.set_title("where the time goes")
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    names, p50, p99 = [], [], []
    for mode in modes:
        e = doc["reports"][mode]["stats"]["e2e"]
        names.append(f"rack {mode}"), p50.append(e["p50"]), p99.append(e["p99"])
    for name, s in doc["cpu"].items():
        names.append(name), p50.append(s["p50"]), p99.append(s["p99"])
    y = np.arange(len(names))
    ax2.barh(y - 0.2, p50, 0.4, label="p50")
    ax2.barh(y + 0.2, p99, 0.4, label="p99")
    ax2.set_yticks(y, names, fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency per call (us)")
    ax2.set_title("rack vs CPU")
    ax2.legend(fontsize=8)
    fig.suptitle(f"plan {doc['plan_hash']} on {doc['rack']}, {doc['time'][:19]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save(doc: Dict, path: Path) -> Path:
    """Write the bench document as JSON to `path` and the per-hop PNG beside it; returns the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    return plot(doc, path.with_suffix(".png"))
