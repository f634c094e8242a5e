"""`splitrack run plan/ --boards rack.toml --data digits`: stream frames through a deployed rack and check
every answer.

The plan is deployed first (`harness.rack.deploy.deploy`: boards that already carry the partition are not
flashed again), or, with `--local`, run by agents on this machine (`harness.rack.local_rack`, no SSH). Frames are
streamed with several in flight (`harness.measure.stream`); each output is compared with the plan's chained hls4ml
emulation (`splitting.chain`), which must agree bit for bit, and, for labelled data, scored for accuracy.
Prints a summary table, and writes `run.json` (per-frame latencies and stamps) and `run.png` to `--out`.
On a fault both are still written, with every frame that came back, marked `"complete": false`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from splitting.errors import UserError
from splitting.plan import Plan


class RunError(UserError):
    """Inputs that do not fit the plan, answers that do not match, or a run cut short by a fault."""


def load_data(spec: str, plan: Plan, frames: Optional[int]):
    """'digits' or the user's .npy/.npz file (`splitting.eval_data`) -> EvalData (x in the plan's input shape,
    y labels or None, source, note); raises UserError for a file that does not fit the plan."""
    from splitting.eval_data import load

    return load(spec, plan.model["input_shape"], frames or None, allow=("digits", "file"))


def run_local(plan: Plan, x: np.ndarray, y: Optional[np.ndarray], out_dir: Path, progress=print, **kw) -> dict:
    """Start one local agent per partition (harness.rack.local_rack: the hls4ml emulation, no SSH), then
    `run_frames` through them; returns its summary. Raises what `run_frames` raises."""
    from harness.rack.local_rack import LocalRack

    with tempfile.TemporaryDirectory(prefix="splitrack-run-") as tmp, LocalRack(Path(tmp)) as rack:
        progress(f"starting {len(plan.partitions)} local agents ...")
        wiring = rack.start(plan, "emulation")
        return run_frames(plan, wiring, x, y, out_dir, "local agents", progress=progress, **kw)


def run_on_rack(plan: Plan, rack, x: np.ndarray, y: Optional[np.ndarray], out_dir: Path, progress=print,
                lease_wait: float = 0.0, where: Optional[str] = None, **kw) -> dict:
    """Lease the plan's boards of `rack` (a harness.rack.rackfile.Rack; through labgrid when the rack file names
    a coordinator, and on the boards themselves), deploy the plan (boards that already carry a partition are
    not flashed again), then `run_frames` through it; returns its summary. The boards stay leased from before
    the deployment to the last frame. Raises LeaseHeld, DeployError, RunError."""
    from harness.rack import lease
    from harness.rack.lab_lease import leased_rack
    from harness.rack.deploy import deploy, place

    with leased_rack(rack, len(plan.partitions), progress=progress) as rack:
        with lease.ensure(list(place(plan, rack).values()), "run", wait=lease_wait, progress=progress) as held:
            dep = deploy(plan, rack, progress=progress)
            flashed = dep.flashed
            progress(f"deployed in {dep.seconds:.1f} s "
                     f"({'flashed ' + ', '.join(flashed) if flashed else 'nothing to flash'})")
            return run_frames(plan, dep.wiring, x, y, out_dir, where or f"rack {rack.name}", progress=progress,
                              held=held, rack_name=rack.name, **kw)


def run_frames(plan: Plan, wiring, x: np.ndarray, y: Optional[np.ndarray], out_dir: Path, where: str,
               in_flight: int = 8, rate: Optional[float] = None, timeout: float = 10.0, check: bool = True,
               progress=print, label: Optional[str] = None, data_source: Optional[str] = None, held=None,
               rack_name: Optional[str] = None, commit: Optional[str] = None) -> dict:
    """Stream the frames `x` (shape (n,) + the plan's input shape) through a started rack (`wiring`), several in
    flight, and check every output against the plan's chained hls4ml emulation (unless check=False) and the
    labels `y` (accuracy). Writes out_dir/run.json (per-frame stamps) and run.png; returns the summary
    (latencies in microseconds). On a fault (a lost frame or agent, an agent that cannot be reached, a lease
    lost: `held.check()`) both files are still written, with every frame that came back, marked
    `"complete": false` with the error, and RunError is raised; RunError too when any output differs from
    the emulation. `rack_name` is the rack's name as `bench` records it (default: `where`), `commit` the user's
    commit (default: the plan folder's, harness.results.stamp.user_commit); the controls
    (harness.measure.controls) are measured before and after the frames."""
    from harness.measure import controls as controls_mod
    from harness.measure.stream import Pipeline, StreamError, StreamResult
    from harness.measure.compute_source import compute_sources, fpga_short
    from harness.results.stamp import RUN_KIND, machine_name, now_iso, splitrack_version, user_commit

    # what each partition's compute figure is (asked of the agents before the frames go)
    compute = {p: c.to_dict() for p, c in compute_sources(plan, wiring).items()}
    progress(f"streaming {len(x)} frames through {where}, {in_flight} in flight ...")
    error = None
    host_load, ctl = controls_mod.HostLoad(), controls_mod.Controls()
    try:
        with Pipeline(wiring) as pipe:
            ctl.sample(pipe, wiring)  # the machine before the frames ...
            res = pipe.stream(x, in_flight=in_flight, rate=rate, timeout=timeout,
                              progress=lambda i, n: progress(f"  {i}/{n} frames sent"))
            ctl.sample(pipe, wiring)  # ... and after them
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
    from harness.measure import plausibility
    from harness.measure.attribution import Topology

    # the boards' stamps, checked (order on each board, no dwell beyond the frame's end to end): a run whose
    # stamps cannot be true is marked untrusted, never complete (harness.measure.plausibility)
    untrusted = plausibility.problems(res.timings(), Topology.from_plan(
        plan, {p: ep.board for p, ep in wiring.endpoints.items()}))
    if untrusted:
        error = untrusted + (f"; {error}" if error else "")
    got = [i for i, f in enumerate(res.frame_ids) if f in res.frames]  # inputs whose answer came back
    ids = [res.frame_ids[i] for i in got]
    n = len(got)
    outputs = np.stack([res.frames[f].output for f in ids]) if ids else np.zeros((0,))
    lat = np.array([res.frames[f].latency_ns for f in ids], dtype=np.int64) / 1e3
    # kind, time, machine, commit and model: what `splitrack history add run.json` needs to keep this run
    summary = {"kind": RUN_KIND, "plan": plan.hash, "label": label or plan.model.get("name") or plan.hash,
               "model": plan.model.get("name") or "", "where": where, "rack": rack_name or where, "time": now_iso(),
               "machine": machine_name(), "commit": user_commit(plan.root, commit), "splitrack": splitrack_version(),
               "controls": ctl.summary(), "host": host_load.stop(),
               **({"controls_errors": ctl.errors} if ctl.errors else {}),
               "data": data_source, "frames": len(x), "frames_received": n,
               "complete": error is None, "error": error, "in_flight": in_flight,
               **({"untrusted": untrusted} if untrusted else {}),
               "throughput_fps": res.throughput if n else float("nan"), "latency_us": _pcts(lat)}
    if y is not None and n:
        summary["accuracy"] = float(np.mean(np.argmax(outputs.reshape(n, -1), axis=1) == np.asarray(y)[got]))
    mismatches = None
    summary["checked_against_emulation"] = bool(check and n)  # --no-check: nothing vouches for the outputs
    if check and n:
        from splitting.chain import emulation_runner, run_chain
        from splitting.hls import project_dir

        from harness.rack.artifacts import checked_library

        for p in plan.ordered_partitions():  # the reference must not come from a damaged library either
            checked_library(project_dir(plan, p.name), p.name)
        ref = np.asarray(run_chain(plan, x[got], emulation_runner(plan))).reshape(outputs.shape)
        bad = np.any(ref.reshape(n, -1) != outputs.reshape(n, -1), axis=1)
        mismatches = int(bad.sum())
        summary["emulation_mismatches"] = mismatches
    stamps = {f: res.stamps(f) for f in ids}  # once per frame (each call walks the frame's records)
    dwell = {}
    for name in (p.name for p in plan.ordered_partitions()):
        d = [stamps[f][name] for f in ids if name in stamps[f]]
        if d:
            dwell[name] = {"board": d[0]["board"], "dwell_us": _pcts([(s["t_send"] - s["t_recv"]) / 1e3 for s in d]),
                           "compute_us": _pcts([(s["t_compute_end"] - s["t_compute_start"]) / 1e3 for s in d]),
                           "compute": compute[name]}
    summary["partitions"] = dwell

    if dwell:
        progress(f"\n{'partition':>12} {'board':>14} {'dwell p50 us':>13} {'compute p50 us':>15}  "
                 f"{'compute is':24s} FPGA compute")
        for name, d in dwell.items():
            progress(f"{name:>12} {d['board']:>14} {d['dwell_us']['p50']:13.1f} {d['compute_us']['p50']:15.1f}  "
                     f"{d['compute']['label']:24s} {fpga_short(d['compute'])}")
        for note in dict.fromkeys(c["fpga_note"] for c in compute.values() if c["fpga_note"]):
            progress(f"FPGA compute: {note}")
        if any(c["label"].startswith("CPU") for c in compute.values()):
            progress("\"CPU: ...\" compute is this machine's CPU running a bit-exact model of the partition "
                     "(virtual boards), not FPGA time")
    if n:
        progress(f"\nframes {n}{'' if error is None else f' of {len(x)}'}  throughput {summary['throughput_fps']:.0f} "
                 f"frames/s  end-to-end p50 {summary['latency_us']['p50']:.0f} us  p99 {summary['latency_us']['p99']:.0f} us")
    if "accuracy" in summary:
        progress(f"accuracy {summary['accuracy']:.4f}")
    progress(controls_mod.format_controls(summary["controls"], summary["host"]))
    if mismatches is not None:
        progress(f"outputs equal to the chained emulation, bit for bit: {n - mismatches}/{n}")

    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [{"frame": f, "t_send": res.frames[f].t_send, "t_recv": res.frames[f].t_recv, "stamps": stamps[f]}
              for f in ids]
    (out_dir / "run.json").write_text(json.dumps({"summary": summary, "frames": frames}, indent=1))
    _plot(lat, dwell, res, ids, out_dir / "run.png", error, compute, stamps)
    progress(f"wrote {out_dir / 'run.json'} and {out_dir / 'run.png'}" + ("" if error is None else " (incomplete)"))
    if error is not None:
        raise RunError(f"{error} (the {n} frame(s) received are in {out_dir / 'run.json'}, marked incomplete)")
    if mismatches:
        raise RunError(f"{mismatches} of {len(x)} outputs differ from the plan's chained emulation: "
                       "the boards do not run the plan's partitions (redeploy with --force)")
    return summary


def _pcts(v_us) -> dict:
    """p50/p90/p99/max (and mean, jitter, n) of values in microseconds (attribution.stats, the one home);
    None for each figure when there are no values."""
    from harness.measure.attribution import stats

    v = np.asarray(v_us, dtype=np.float64)
    if not v.size:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    return stats(v * 1e3)


def _plot(lat, dwell, res, ids, path: Path, error: Optional[str] = None, compute: Optional[dict] = None,
          stamps: Optional[dict] = None) -> None:
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
        stamps = stamps or {f: res.stamps(f) for f in ids}
        data = [[(stamps[f][n]["t_send"] - stamps[f][n]["t_recv"]) / 1e3 for f in ids if n in stamps[f]] for n in names]
        b.boxplot(data, tick_labels=[f"{n}\n{dwell[n]['board']}\n{(compute or {}).get(n, {}).get('label', '')}"
                                     for n in names], showfliers=False)
        # several partitions' three-line labels collide side by side: smaller, and slanted when there are many
        b.tick_params(axis="x", labelsize=7, rotation=30 if len(names) > 4 else 0)
    b.set_ylabel("time on the board, receive to send (us)")
    b.set_title("per-partition dwell (board clock)")
    if error is not None:
        fig.suptitle(f"INCOMPLETE: {error[:150]}", fontsize=8, color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
