"""`splitrack run plan/ --boards rack.toml --data digits`: stream frames through a deployed rack and check
every answer.

The plan is deployed first (`harness.deploy.deploy`: boards that already carry the partition are not
flashed again), or, with `--local`, run by agents on this machine (`harness.local_rack`, no SSH). Frames are
streamed with several in flight (`harness.stream`); each output is compared with the plan's chained hls4ml
emulation (`splitting.chain`), which must agree bit for bit, and, for labelled data, scored for accuracy.
Prints a summary table, and writes `run.json` (per-frame latencies and stamps) and `run.png` to `--out`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from splitting.errors import UserError
from splitting.plan import Plan


class RunError(UserError):
    """Inputs that do not fit the plan, or answers that do not match."""


def load_data(spec: str, plan: Plan, frames: Optional[int]):
    """'digits' or the user's .npy/.npz file (`splitting.eval_data`) -> EvalData in the plan's input shape."""
    from splitting.eval_data import load

    return load(spec, plan.model["input_shape"], frames or None, allow=("digits", "file"))


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="plan folder (written by `splitrack split` or `splitrack plan`)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--boards", type=Path, help="rack file (boards.toml, or rack.toml of `splitrack rack up`)")
    where.add_argument("--local", action="store_true", help="run the agents as local processes (no SSH, no rack)")
    p.add_argument("--data", default="digits", help="'digits' (splitrack's own split: may overlap your training data) "
                   "or your .npz (x, optional y labels) / .npy file (default digits)")
    p.add_argument("--label", default=None, help="name of this run's series (default: the plan's model name)")
    p.add_argument("--frames", type=int, default=None, help="stream only the first N frames")
    p.add_argument("--in-flight", type=int, default=8, help="frames in flight (default 8)")
    p.add_argument("--rate", type=float, default=None, help="offered rate, frames/s (default: as fast as it goes)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a frame may take before it is lost")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the chained emulation")
    p.add_argument("--out", type=Path, default=None, help="folder for run.json and run.png (default: plan/run)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another user holds a board's lease, wait up to this long for it (default: fail at once)")


def run(args) -> int:
    plan = Plan.load(args.plan)
    data = load_data(args.data, plan, args.frames)
    x, y = data.x, data.y
    print(f"data: {data.describe()}" + (f"\n  note: {data.note}" if data.note else ""), flush=True)
    args.data_source = data.source
    out_dir = args.out or plan.root / "run"
    if args.local:
        from .local_rack import LocalRack

        with tempfile.TemporaryDirectory(prefix="splitrack-run-") as tmp, LocalRack(Path(tmp)) as rack:
            print(f"starting {len(plan.partitions)} local agents ...", flush=True)
            wiring = rack.start(plan, "emulation")
            return _run(args, plan, wiring, x, y, out_dir, where="local agents")
    from . import lease
    from .deploy import deploy, place
    from .rack import load_rack

    from .lab_lease import leased_rack

    with leased_rack(load_rack(args.boards), len(plan.partitions)) as rack:  # a shared rack: leased meanwhile
        # the boards are ours from before the deployment to the last frame: nobody redeploys them under the run
        with lease.ensure(list(place(plan, rack).values()), "run", wait=args.wait,
                          progress=lambda s: print(s, flush=True)) as held:
            dep = deploy(plan, rack, progress=lambda s: print(s, flush=True))
            flashed = dep.flashed
            print(f"deployed in {dep.seconds:.1f} s ({'flashed ' + ', '.join(flashed) if flashed else 'nothing to flash'})")
            return _run(args, plan, dep.wiring, x, y, out_dir, where=f"rack {args.boards}", held=held)


def _run(args, plan: Plan, wiring, x, y, out_dir: Path, where: str, held=None) -> int:
    """Stream, check, write run.json and run.png. On a fault (a lost frame or agent, an agent that cannot
    be reached, a lease lost) both are still written, with every frame that came back, marked
    `"complete": false` with the error; then RunError is raised (exit status 2)."""
    from .stream import Pipeline, StreamError, StreamResult

    print(f"streaming {len(x)} frames through {where}, {args.in_flight} in flight ...", flush=True)
    error = None
    try:
        with Pipeline(wiring) as pipe:
            res = pipe.stream(x, in_flight=args.in_flight, rate=args.rate, timeout=args.timeout,
                              progress=lambda i, n: print(f"  {i}/{n} frames sent", flush=True))
    except StreamError as e:
        res, error = e.result, str(e)
    except (UserError, OSError) as e:  # no stream at all (an agent that does not accept connections ...)
        res, error = StreamResult(wiring, []), str(e)
    if held is not None and error is None:
        try:
            held.check()
        except UserError as e:
            error = str(e)
    if error is None and not res.complete:
        error = "; ".join(res.errors) or "frames missing"
    got = [i for i, f in enumerate(res.frame_ids) if f in res.frames]  # inputs whose answer came back
    ids = [res.frame_ids[i] for i in got]
    n = len(got)
    outputs = np.stack([res.frames[f].output for f in ids]) if ids else np.zeros((0,))
    lat = np.array([res.frames[f].latency_ns for f in ids], dtype=np.int64) / 1e3
    from .history import RUN_KIND, current_commit, machine_name, now_iso

    # kind, time, machine, commit and model: what `splitrack history add run.json` needs to keep this run
    summary = {"kind": RUN_KIND, "plan": plan.hash, "label": args.label or plan.model.get("name") or plan.hash,
               "model": plan.model.get("name") or "", "where": where, "time": now_iso(), "machine": machine_name(),
               "commit": current_commit(Path(__file__).resolve().parent),
               "data": getattr(args, "data_source", args.data), "frames": len(x), "frames_received": n,
               "complete": error is None, "error": error, "in_flight": args.in_flight,
               "throughput_fps": res.throughput if n else float("nan"), "latency_us": _pcts(lat)}
    if y is not None and n:
        summary["accuracy"] = float(np.mean(np.argmax(outputs.reshape(n, -1), axis=1) == np.asarray(y)[got]))
    mismatches = None
    if not args.no_check and n:
        from splitting.chain import emulation_runner, run_chain
        from splitting.hls import project_dir

        from .deploy import checked_library

        for p in plan.ordered_partitions():  # the reference must not come from a damaged library either
            checked_library(project_dir(plan, p.name), p.name)
        ref = np.asarray(run_chain(plan, x[got], emulation_runner(plan))).reshape(outputs.shape)
        bad = np.any(ref.reshape(n, -1) != outputs.reshape(n, -1), axis=1)
        mismatches = int(bad.sum())
        summary["emulation_mismatches"] = mismatches
    dwell = {}
    for name in (p.name for p in plan.ordered_partitions()):
        d = [res.stamps(f)[name] for f in ids if name in res.stamps(f)]
        if d:
            dwell[name] = {"board": d[0]["board"], "dwell_us": _pcts([(s["t_send"] - s["t_recv"]) / 1e3 for s in d]),
                           "compute_us": _pcts([(s["t_compute_end"] - s["t_compute_start"]) / 1e3 for s in d])}
    summary["partitions"] = dwell

    if dwell:
        print(f"\n{'partition':>12} {'board':>14} {'dwell p50 us':>13} {'compute p50 us':>15}")
        for name, d in dwell.items():
            print(f"{name:>12} {d['board']:>14} {d['dwell_us']['p50']:13.1f} {d['compute_us']['p50']:15.1f}")
    if n:
        print(f"\nframes {n}{'' if error is None else f' of {len(x)}'}  throughput {summary['throughput_fps']:.0f} "
              f"frames/s  end-to-end p50 {summary['latency_us']['p50']:.0f} us  p99 {summary['latency_us']['p99']:.0f} us")
    if "accuracy" in summary:
        print(f"accuracy {summary['accuracy']:.4f}")
    if mismatches is not None:
        print(f"outputs equal to the chained emulation, bit for bit: {n - mismatches}/{n}")

    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [{"frame": f, "t_send": res.frames[f].t_send, "t_recv": res.frames[f].t_recv, "stamps": res.stamps(f)}
              for f in ids]
    (out_dir / "run.json").write_text(json.dumps({"summary": summary, "frames": frames}, indent=1))
    _plot(lat, dwell, res, ids, out_dir / "run.png", error)
    print(f"wrote {out_dir / 'run.json'} and {out_dir / 'run.png'}" + ("" if error is None else " (incomplete)"))
    if error is not None:
        raise RunError(f"{error} (the {n} frame(s) received are in {out_dir / 'run.json'}, marked incomplete)")
    if mismatches:
        raise RunError(f"{mismatches} of {len(x)} outputs differ from the plan's chained emulation: "
                       "the boards do not run the plan's partitions (redeploy with --force)")
    return 0


def _pcts(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    if not v.size:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {k: float(np.percentile(v, q)) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))} | {"max": float(v.max())}


def _plot(lat, dwell, res, ids, path: Path, error: Optional[str] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(lat, ".", ms=3)
    a.set_xlabel("frame")
    a.set_ylabel("end-to-end latency (us)")
    a.set_title(f"{len(lat)} frames" + (f", {res.throughput:.0f} frames/s" if len(lat) > 1 else ""))
    names = list(dwell)
    if names:
        data = [[(res.stamps(f)[n]["t_send"] - res.stamps(f)[n]["t_recv"]) / 1e3 for f in ids if n in res.stamps(f)]
                for n in names]
        b.boxplot(data, tick_labels=[f"{n}\n{dwell[n]['board']}" for n in names], showfliers=False)
    b.set_ylabel("time on the board, receive to send (us)")
    b.set_title("per-partition dwell (board clock)")
    if error is not None:
        fig.suptitle(f"INCOMPLETE: {error[:150]}", fontsize=8, color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
