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

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from splitting.errors import UserError

from . import history, measure

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


class BenchIncomplete(UserError):
    """The bench stopped on a fault; `doc` is the bench document with every frame received, marked
    `"complete": false` with the error."""

    def __init__(self, message: str, doc: Dict):
        super().__init__(message)
        self.doc = doc


class _RecordingPipe:
    """The Pipeline as measure_rack sees it, keeping every stream's result, also of a stream that fails,
    so that a fault does not discard the frames already measured."""

    def __init__(self, pipe, modes):
        self._pipe = pipe
        self._modes = list(modes)
        self.results = {}  # mode -> StreamResult (possibly partial)

    def stream(self, *a, **kw):
        from .stream import StreamError

        mode = self._modes[len(self.results)] if len(self.results) < len(self._modes) else f"run{len(self.results)}"
        try:
            res = self._pipe.stream(*a, **kw)
        except StreamError as e:
            self.results[mode] = e.result
            raise
        self.results[mode] = res
        return res

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def frames_of(res) -> list:
    """Every frame a stream received: id, host send/receive times (ns) and the boards' stamps."""
    return [{"frame": f, "t_send": res.frames[f].t_send, "t_recv": res.frames[f].t_recv, "stamps": res.stamps(f)}
            for f in res.frame_ids if f in res.frames]


def bench(plan, rack, frames: int = 2000, rate: Optional[float] = None, in_flight: int = 8,
          single_rate: Optional[float] = DEFAULT_SINGLE_RATE, data: str = "auto", cpu: bool = True,
          progress: Callable[[str], None] = print, deployment=None, lease_wait: float = 0.0) -> Dict:
    """Deploy (unless `deployment` is given), measure, and return the bench document (the --json content).

    The boards are leased for the whole bench (harness.lease; LeaseHeld when another user holds one). On a
    fault while measuring, raises BenchIncomplete whose `doc` has the same keys, `"complete": false`, the
    error, and under "frames" every frame received per mode (the attribution needs a finished run)."""
    from . import lease
    from .deploy import place

    if frames < 2:
        raise UserError(f"--frames {frames}: give at least 2 frames")
    if in_flight < 1:
        raise UserError(f"--in-flight {in_flight}: at least 1")
    x, labels = bench_data(plan, frames, data)
    boards = list(deployment.boards.values()) if deployment is not None else list(place(plan, rack).values())
    with lease.ensure(boards, "bench", wait=lease_wait, progress=progress) as held:
        return _bench(plan, rack, x, labels, frames, rate, in_flight, single_rate, cpu, progress, deployment, held)


def _bench(plan, rack, x, labels, frames, rate, in_flight, single_rate, cpu, progress, deployment, held) -> Dict:
    from . import cpu_reference
    from .deploy import deploy
    from .stream import Pipeline

    if deployment is None:
        deployment = deploy(plan, rack, progress=progress)
    wiring = deployment.wiring
    time = history.now_iso()
    doc = {
        "kind": history.BENCH_KIND, "version": 1, "time": time, "rack": rack.name, "machine": history.machine_name(),
        "commit": history.current_commit(Path(__file__).resolve().parent), "plan_hash": plan.hash,
        "plan": str(plan.root) if plan.root else None, "model": plan.model.get("name"), "frames": frames,
        "placement": {p: b.name for p, b in deployment.boards.items()},
        "reports": {}, "clocks": {}, "payload_bytes": {}, "cpu": {}, "accuracy": {},
        "complete": True, "error": None,
    }
    modes = ["single", "stream"]  # the order in which measure_rack streams
    rec = None
    try:
        with Pipeline(wiring) as pipe:
            rec = _RecordingPipe(pipe, modes)
            run = measure.measure_rack(rec, wiring, plan, x, rate=rate, in_flight=in_flight, single_rate=single_rate,
                                       progress=progress)
        if held is not None:
            held.check()
    except (UserError, OSError) as e:
        results = rec.results if rec is not None else {}
        doc.update(complete=False, error=str(e), frames={m: frames_of(r) for m, r in results.items()},
                   frames_received={m: len(r.frames) for m, r in results.items()})
        got = sum(doc["frames_received"].values())
        raise BenchIncomplete(f"{e} (bench incomplete: {got} frame(s) received, kept)", doc) from None
    doc.update(reports=run.reports, clocks=run.clocks, payload_bytes=run.payload_bytes)
    if cpu:
        ref = cpu_reference.reference(plan, x, in_flight, run.outputs, labels, progress=progress)
        doc["cpu"], doc["accuracy"] = ref["cpu"], ref["accuracy"]
    return doc


def format_bench(doc: Dict) -> str:
    from .cpu_reference import format_reference

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


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="plan folder (from `splitrack split` or `splitrack plan`)")
    p.add_argument("--boards", type=Path, required=True, help="rack file (boards.toml)")
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--rate", type=float, default=None, help="offered rate of the stream, frames/s (default: as fast "
                   "as the rack takes them)")
    p.add_argument("--in-flight", type=int, default=8, help="frames in flight in the stream (and the CPU's batch)")
    p.add_argument("--single-rate", type=float, default=DEFAULT_SINGLE_RATE,
                   help="pace of the single-frame run, frames/s (0: back to back)")
    p.add_argument("--data", default="auto", choices=("auto", "digits", "random"))
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU reference")
    p.add_argument("--json", type=Path, default=None, help="write the result here (and a PNG beside it)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another user holds a board's lease, wait up to this long for it (default: fail at once)")


def write_incomplete(doc: Dict, path: Path) -> Path:
    """Write an incomplete bench document and its plot (every frame's end-to-end latency) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for mode, frames in doc.get("frames", {}).items():
        ax.plot([(f["t_recv"] - f["t_send"]) / 1e3 for f in frames], ".", ms=3, label=f"{mode}: {len(frames)} frames")
    ax.set_xlabel("frame (received, in order)")
    ax.set_ylabel("end-to-end latency (us)")
    if doc.get("frames"):
        ax.legend(fontsize=8)
    ax.set_title(f"INCOMPLETE: {str(doc.get('error'))[:110]}", fontsize=8, color="red")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    from splitting.plan import Plan

    from .rack import load_rack

    plan = Plan.load(args.plan)
    rack = load_rack(args.boards)
    try:
        doc = bench(plan, rack, args.frames, args.rate, args.in_flight, args.single_rate or None, args.data,
                    cpu=not args.no_cpu, lease_wait=args.wait)
    except BenchIncomplete as e:
        # where the complete result would have gone; without --json, beside the plan (nothing measured is lost)
        path = args.json or (plan.root / "bench" / f"incomplete-{e.doc['time'].replace(':', '')}.json")
        write_incomplete(e.doc, path)
        raise BenchIncomplete(f"{e}; wrote {path} and {path.with_suffix('.png')}", e.doc) from None
    print(format_bench(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
        png = plot(doc, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {png}")
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
