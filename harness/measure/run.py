"""`splitrack run plan/ --boards rack.toml --data digits`: stream frames through a deployed rack and check
every answer.

The plan is deployed first (`harness.rack.deploy.deploy`: boards that already carry the partition are not
flashed again), or, with `--local`, run by agents on this machine (`harness.rack.local_rack`, no SSH). Frames are
streamed with several in flight (`harness.measure.stream`); each output is compared with the plan's chained hls4ml
emulation (`splitting.chain`), which must agree bit for bit, and, for labelled data, scored for accuracy.
Prints a summary table, and writes `run.json` (per-frame latencies and stamps) and `run.png` to `--out`.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from splitting.errors import UserError
from splitting.plan import Plan


class RunError(UserError):
    """Inputs that do not fit the plan, or answers that do not match."""


def load_data(spec: str, plan: Plan, frames: Optional[int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """'digits' (the scikit-learn digits test split) or an .npy/.npz file -> (x in the plan's input shape, labels)."""
    shape = tuple(int(s) for s in plan.model["input_shape"])
    if spec == "digits":
        from splitting.reference import digits_data

        _, _, x, y = digits_data()
    else:
        p = Path(spec)
        if not p.is_file():
            raise RunError(f"--data {spec}: give 'digits' or an existing .npy / .npz file of input frames")
        d = np.load(p)
        if isinstance(d, np.lib.npyio.NpzFile):
            x, y = d["x"], (d["y"] if "y" in d.files else None)
        else:
            x, y = d, None
    x = np.asarray(x, dtype=np.float32)
    if x.size // max(len(x), 1) != math.prod(shape):
        raise RunError(f"--data frames have {x.size // max(len(x), 1)} values, the plan takes {shape}: "
                       "give data made for this model")
    x = x.reshape((len(x),) + shape)
    if frames:
        x, y = x[:frames], (y[:frames] if y is not None else None)
    return x, y


def run_local(plan: Plan, x: np.ndarray, y: Optional[np.ndarray], out_dir: Path, progress=print, **kw) -> dict:
    """Start one local agent per partition (harness.rack.local_rack: the hls4ml emulation, no SSH), then
    `run_frames` through them; returns its summary. Raises what `run_frames` raises."""
    from harness.rack.local_rack import LocalRack

    with tempfile.TemporaryDirectory(prefix="splitrack-run-") as tmp, LocalRack(Path(tmp)) as rack:
        progress(f"starting {len(plan.partitions)} local agents ...")
        wiring = rack.start(plan, "emulation")
        return run_frames(plan, wiring, x, y, out_dir, "local agents", progress=progress, **kw)


def run_on_rack(plan: Plan, rack, x: np.ndarray, y: Optional[np.ndarray], out_dir: Path, progress=print,
                **kw) -> dict:
    """Deploy the plan on `rack` (a harness.rack.rackfile.Rack; boards that already carry a partition are not
    flashed again), then `run_frames` through it; returns its summary. Raises DeployError, RunError, StreamError."""
    from harness.rack.deploy import deploy

    dep = deploy(plan, rack, progress=progress)
    flashed = dep.flashed
    progress(f"deployed in {dep.seconds:.1f} s ({'flashed ' + ', '.join(flashed) if flashed else 'nothing to flash'})")
    return run_frames(plan, dep.wiring, x, y, out_dir, f"rack {rack.name}", progress=progress, **kw)


def run_frames(plan: Plan, wiring, x: np.ndarray, y: Optional[np.ndarray], out_dir: Path, where: str,
               in_flight: int = 8, rate: Optional[float] = None, timeout: float = 10.0, check: bool = True,
               progress=print) -> dict:
    """Stream the frames `x` (shape (n,) + the plan's input shape) through a started rack (`wiring`), several in
    flight, and check every output against the plan's chained hls4ml emulation (unless check=False) and the
    labels `y` (accuracy). Writes out_dir/run.json (per-frame stamps) and run.png; returns the summary
    (latencies in microseconds). Raises RunError when any output differs from the emulation."""
    from harness.measure.stream import Pipeline

    progress(f"streaming {len(x)} frames through {where}, {in_flight} in flight ...")
    with Pipeline(wiring) as pipe:
        res = pipe.stream(x, in_flight=in_flight, rate=rate, timeout=timeout,
                          progress=lambda i, n: progress(f"  {i}/{n} frames sent"))
    outputs = res.outputs()
    lat = res.latencies_ns() / 1e3
    summary = {"plan": plan.hash, "where": where, "frames": len(x), "in_flight": in_flight,
               "throughput_fps": res.throughput, "latency_us": _pcts(lat)}
    if y is not None:
        summary["accuracy"] = float(np.mean(np.argmax(outputs.reshape(len(x), -1), axis=1) == y))
    mismatches = None
    if check:
        from splitting.chain import emulation_runner, run_chain

        ref = np.asarray(run_chain(plan, x, emulation_runner(plan))).reshape(outputs.shape)
        bad = np.any(ref.reshape(len(x), -1) != outputs.reshape(len(x), -1), axis=1)
        mismatches = int(bad.sum())
        summary["emulation_mismatches"] = mismatches
    dwell = {}
    for name in (p.name for p in plan.ordered_partitions()):
        d = [res.stamps(f)[name] for f in res.frame_ids]
        dwell[name] = {"board": d[0]["board"], "dwell_us": _pcts([(s["t_send"] - s["t_recv"]) / 1e3 for s in d]),
                       "compute_us": _pcts([(s["t_compute_end"] - s["t_compute_start"]) / 1e3 for s in d])}
    summary["partitions"] = dwell

    progress(f"\n{'partition':>12} {'board':>14} {'dwell p50 us':>13} {'compute p50 us':>15}")
    for name, d in dwell.items():
        progress(f"{name:>12} {d['board']:>14} {d['dwell_us']['p50']:13.1f} {d['compute_us']['p50']:15.1f}")
    progress(f"\nframes {len(x)}  throughput {res.throughput:.0f} frames/s  end-to-end p50 {summary['latency_us']['p50']:.0f} us"
          f"  p99 {summary['latency_us']['p99']:.0f} us")
    if "accuracy" in summary:
        progress(f"accuracy {summary['accuracy']:.4f}")
    if mismatches is not None:
        progress(f"outputs equal to the chained emulation, bit for bit: {len(x) - mismatches}/{len(x)}")

    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [{"frame": f, "t_send": res.frames[f].t_send, "t_recv": res.frames[f].t_recv, "stamps": res.stamps(f)}
              for f in res.frame_ids]
    (out_dir / "run.json").write_text(json.dumps({"summary": summary, "frames": frames}, indent=1))
    _plot(lat, dwell, plan, res, out_dir / "run.png")
    progress(f"wrote {out_dir / 'run.json'} and {out_dir / 'run.png'}")
    if mismatches:
        raise RunError(f"{mismatches} of {len(x)} outputs differ from the plan's chained emulation: "
                       "the boards do not run the plan's partitions (redeploy with --force)")
    return summary


def _pcts(v_us) -> dict:
    """p50/p90/p99/max (and mean, jitter, n) of values in microseconds: attribution.stats, the one home."""
    from harness.measure.attribution import stats

    return stats(np.asarray(v_us, dtype=np.float64) * 1e3)


def _plot(lat, dwell, plan, res, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(lat, ".", ms=3)
    a.set_xlabel("frame")
    a.set_ylabel("end-to-end latency (us)")
    a.set_title(f"{len(lat)} frames, {res.throughput:.0f} frames/s")
    names = list(dwell)
    data = [[(res.stamps(f)[n]["t_send"] - res.stamps(f)[n]["t_recv"]) / 1e3 for f in res.frame_ids] for n in names]
    b.boxplot(data, tick_labels=[f"{n}\n{dwell[n]['board']}" for n in names], showfliers=False)
    b.set_ylabel("time on the board, receive to send (us)")
    b.set_title("per-partition dwell (board clock)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
