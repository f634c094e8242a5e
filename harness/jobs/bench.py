"""`splitrack bench`: latency per hop of a plan on a rack, beside the CPU reference, in one run.

    splitrack bench plan/ --boards rack.toml --frames 2000 [--rate R] [--json out.json]

Deploys the plan (nothing is uploaded when the boards already carry it), probes every board's clock,
sends the frames one at a time (paced, single-frame latency), then as a sustained stream (several in
flight, optionally at R frames/s: latency under load, throughput), probes the clocks again, attributes
each frame's time to links and boards, and measures Keras and the hls4ml emulation on this CPU. Per
partition it says what a board's compute figure is (the backend its agent reports: this machine's CPU running a
bit-exact model on a virtual board, the overlay on a PYNQ-Z2) and shows beside it the FPGA compute the RTL
cosimulation measured (plan/cosim.json of `splitrack cosim`), or "not cosimulated (run: ...)". With
--json the whole result goes to a file that `splitrack history add` imports; a PNG of the per-hop
breakdown is written beside it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from splitting.errors import UserError

from harness.results import stamp
from harness.measure import attribution as measure

DEFAULT_SINGLE_RATE = 200.0  # frames/s for the single-frame run: see measure.measure_rack(single_rate)


def bench_data(plan, frames: int, data: str = "auto") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """`frames` inputs for the plan (cycling through the data set) and labels of one pass, when labelled.

    data: "digits", "random", "auto" or the user's FILE.npz / FILE.npy (see `splitting.eval_data`)."""
    d = bench_eval_data(plan, frames, data)
    return d.x, d.y


def bench_eval_data(plan, frames: int, data: str = "auto"):
    """EvalData of `frames` frames (cycled; labels of one pass) from a --data spec."""
    from splitting.eval_data import cycled, load

    return cycled(load(data, plan.model["input_shape"], None if data not in ("random", "auto") else frames), frames)


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
        from harness.measure.stream import StreamError

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
          progress: Callable[[str], None] = print, deployment=None, lease_wait: float = 0.0,
          label: Optional[str] = None, commit: Optional[str] = None) -> Dict:
    """Deploy (unless `deployment` is given), measure, and return the bench document (the --json content).

    The boards are leased for the whole bench (harness.rack.lease; LeaseHeld when another user holds one). On a
    fault while measuring, raises BenchIncomplete whose `doc` has the same keys, `"complete": false`, the
    error, and under "frames" every frame received per mode (the attribution needs a finished run).
    `label` names the run's series in the history (default: the plan's model name); `commit` is the user's commit
    (default: the git commit of the plan's folder, harness.results.stamp.user_commit). Controls are measured
    before and after the frames (harness.measure.controls) and the host's load over the whole bench."""
    from harness.rack import lease
    from harness.rack.deploy import place

    if frames < 2:
        raise UserError(f"--frames {frames}: give at least 2 frames")
    if in_flight < 1:
        raise UserError(f"--in-flight {in_flight}: at least 1")
    ev = bench_eval_data(plan, frames, data)
    progress(f"data: {ev.describe()}" + (f"; note: {ev.note}" if ev.note else ""))
    boards = list(deployment.boards.values()) if deployment is not None else list(place(plan, rack).values())
    with lease.ensure(boards, "bench", wait=lease_wait, progress=progress) as held:
        return _bench(plan, rack, ev, frames, rate, in_flight, single_rate, cpu, progress, deployment, held, label,
                      commit)


def _bench(plan, rack, ev, frames, rate, in_flight, single_rate, cpu, progress, deployment, held, label,
           commit=None) -> Dict:
    from harness.measure import controls as controls_mod
    from harness.measure import cpu_reference
    from harness.measure.compute_source import compute_sources
    from harness.rack.deploy import deploy
    from harness.measure.stream import Pipeline

    x, labels = ev.x, ev.y
    if deployment is None:
        deployment = deploy(plan, rack, progress=progress)
    wiring = deployment.wiring
    time = stamp.now_iso()
    host_load = controls_mod.HostLoad()
    doc = {
        "kind": stamp.BENCH_KIND, "version": 1, "time": time, "rack": rack.name, "machine": stamp.machine_name(),
        "commit": stamp.user_commit(plan.root, commit), "splitrack": stamp.splitrack_version(), "plan_hash": plan.hash,
        "plan": str(plan.root) if plan.root else None, "model": plan.model.get("name"), "frames": frames,
        "label": label or plan.model.get("name") or plan.hash, "complete": True,
        "data": {"source": ev.source, "frames": len(ev.x), "labelled": None if ev.y is None else len(ev.y),
                 "note": ev.note},
        "placement": {p: b.name for p, b in deployment.boards.items()},
        "boards": {b.name: {"kind": b.kind, "pynq_version": b.pynq_version, "partition": p,
                            "timing": getattr(b, "timing", None)} for p, b in deployment.boards.items()},
        "reports": {}, "clocks": {}, "payload_bytes": {}, "cpu": {}, "accuracy": {}, "error": None,
        # per partition what its "board P compute" is (the backend its agent runs) and the FPGA compute of the
        # RTL cosimulation beside it, or why there is none (harness.measure.compute_source)
        "compute": {p: s.to_dict() for p, s in compute_sources(plan, wiring).items()},
    }
    tuning = _tuning(plan)
    if tuning:
        doc["tuning"] = tuning
    modes = ["single", "stream"]  # the order in which measure_rack streams
    rec = None
    ctl = controls_mod.Controls()
    try:
        with Pipeline(wiring) as pipe:
            ctl.sample(pipe, wiring)  # the machine before the frames ...
            rec = _RecordingPipe(pipe, modes)
            run = measure.measure_rack(rec, wiring, plan, x, rate=rate, in_flight=in_flight, single_rate=single_rate,
                                       progress=progress)
            ctl.sample(pipe, wiring)  # ... and after them
        if held is not None:
            held.check()
    except (UserError, OSError) as e:
        results = rec.results if rec is not None else {}
        doc.update(complete=False, error=str(e), frames={m: frames_of(r) for m, r in results.items()},
                   frames_received={m: len(r.frames) for m, r in results.items()})
        got = sum(doc["frames_received"].values())
        raise BenchIncomplete(f"{e} (bench incomplete: {got} frame(s) received, kept)", doc) from None
    doc.update(reports=run.reports, clocks=run.clocks, payload_bytes=run.payload_bytes)
    if run.untrusted:  # the boards' stamps cannot be true: the figures are no result (harness.measure.plausibility)
        doc.update(complete=False, untrusted=run.untrusted, error=run.untrusted,
                   frames={m: frames_of(r) for m, r in rec.results.items()},
                   frames_received={m: len(r.frames) for m, r in rec.results.items()})
        raise BenchIncomplete(f"{run.untrusted} (bench marked untrusted, its frames kept)", doc)
    bad = _emulation_mismatches(plan, x, rec.results)
    doc["emulation_mismatches"] = bad
    if any(bad.values()):  # a fast rack that computes something else is not a result
        doc.update(complete=False, frames={m: frames_of(r) for m, r in rec.results.items()},
                   frames_received={m: len(r.frames) for m, r in rec.results.items()},
                   error="outputs differ from the plan's chained hls4ml emulation ("
                         + ", ".join(f"{m}: {n} of {len(x)}" for m, n in bad.items()) + "): the boards do not "
                         "run the plan's partitions (redeploy with --force)")
        raise BenchIncomplete(doc["error"], doc)
    if cpu:
        ref = cpu_reference.reference(plan, x, in_flight, run.outputs, labels, progress=progress)
        doc["cpu"], doc["accuracy"] = ref["cpu"], ref["accuracy"]
    doc["controls"], doc["host"] = ctl.summary(), host_load.stop()
    if ctl.errors:
        doc["controls_errors"] = ctl.errors
    return doc


def _tuning(plan) -> Optional[Dict]:
    """What tunes the plan for one target without being part of its hash (plan/tuning.json of `splitrack
    cosim`: FIFO depths), with its content hash; None when there is none."""
    from harness.cosim import record

    return record.tuning_summary(plan)


def _emulation_mismatches(plan, x: np.ndarray, results: Dict) -> Dict[str, int]:
    """Per mode, how many of the rack's outputs differ (any element) from the plan's chained hls4ml emulation
    on the same inputs `x` ((frames,) + input shape); every mode's outputs are checked, bit for bit."""
    from splitting.chain import emulation_runner, run_chain

    ref = np.asarray(run_chain(plan, x, emulation_runner(plan))).reshape(len(x), -1)
    return {mode: int(np.any(np.asarray(r.outputs()).reshape(len(x), -1) != ref, axis=1).sum())
            for mode, r in results.items()}


def format_bench(doc: Dict) -> str:
    """The bench document as text: placement, each board's clock offset (us, +- error) and drift (ppm)
    against the host, the per-hop latency reports (us) with what each board's compute is, the legend of
    those (the backend per partition and the RTL cosimulation's FPGA compute beside it, when the document
    has them), the CPU reference, and the accuracy data used."""
    from harness.measure.compute_source import format_sources, hop_notes
    from harness.measure.cpu_reference import format_reference

    out = [f"{doc.get('label')}: plan {doc['plan_hash']} ({doc.get('model')}) on rack {doc['rack']}: "
           + ", ".join(f"{p} on {b}" for p, b in doc["placement"].items())]
    out.append("clocks (board - host): " + ", ".join(
        f"{b} {c['offset_ns'] / 1e3:+.1f} us (+-{c['error_ns'] / 1e3:.1f}, drift {c['drift_ppm']:+.2f} ppm)"
        for b, c in doc["clocks"].items()))
    notes = hop_notes(doc.get("compute"))
    for rep in doc["reports"].values():
        out.append(measure.format_report(rep, notes))
    if doc.get("compute"):
        out.append(format_sources(doc["compute"]))
    if doc["cpu"]:
        out.append(format_reference({"cpu": doc["cpu"], "accuracy": doc["accuracy"]}, doc["reports"]))
    if doc.get("controls") or doc.get("host"):
        from harness.measure.controls import format_controls

        out.append(format_controls(doc.get("controls"), doc.get("host")))
    if doc.get("data"):
        d = doc["data"]
        out.append(f"accuracy data: {d['source']}" + (f" ({d['labelled']} labelled frames)" if d.get("labelled") else
                                                       " (no labels: no accuracy)")
                   + (f"\n  note: {d['note']}" if d.get("note") else ""))
    return "\n".join(out)


def critical_parts(rep: Dict) -> Tuple[Dict[str, float], float, str]:
    """The parts of one report's end-to-end time along the critical path, in hop order, that add up.

    Returns ({hop: us}, end-to-end us, what the figures are). With per-frame samples these are MEANS:
    each frame's critical-path parts sum to its end-to-end time, so their means sum to the mean end to end
    exactly (medians do not: the median of a sum is not the sum of the medians). Without samples (an old
    document) the medians are returned, with a statement that they need not add up.
    """
    hops = list(rep["hops"])
    crit = (rep.get("samples_us") or {}).get("critical")
    if crit and all(h in crit for h in hops) and rep["samples_us"].get("e2e"):
        parts = {h: float(np.mean(crit[h])) for h in hops}
        return parts, float(np.mean(rep["samples_us"]["e2e"])), "means (they add up to the mean end to end)"
    parts = {h: float(rep["breakdown_p50_us"].get(h, 0.0)) for h in hops}
    return parts, float(rep["stats"]["e2e"]["p50"]), ("medians (they need not add up to the median end to end: "
                                                     "the median of a sum is not the sum of the medians)")


def plot(doc: Dict, path: Path) -> Path:
    """PNG: each mode's critical-path parts stacked (they add up to the end to end), and the rack beside the CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    modes = list(doc["reports"])
    cmap = plt.get_cmap("tab20")
    captions = []
    handles = {}
    compute = doc.get("compute") or {}
    for i, mode in enumerate(modes):
        parts, e2e, what = critical_parts(doc["reports"][mode])
        base = 0.0
        for k, (h, v) in enumerate(parts.items()):
            name = "host queue + " + h if h.startswith("link host->") else h
            if h.startswith("board ") and h[len("board "):] in compute:  # who computed: CPU model or FPGA
                name += f" ({compute[h[len('board '):]].get('label')})"
            handles[name] = ax1.bar(i, v, bottom=base, color=cmap(k % 20), label=name)
            base += v
        ax1.plot([i - 0.45, i + 0.45], [e2e, e2e], color="k", lw=1)
        captions.append(f"{mode}: parts sum {base:.0f} us, end to end {e2e:.0f} us ({what})")
    ax1.set_xticks(range(len(modes)), modes)
    ax1.set_ylabel("time on the critical path (us)")
    ax1.set_title("where the time goes (black line: end to end)")
    # legend top to bottom in the order of the stack (the last part is on top)
    names = list(handles)[::-1]
    ax1.legend([handles[n] for n in names], names, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    names, p50, p99 = [], [], []
    for mode in modes:
        e = doc["reports"][mode]["stats"]["e2e"]
        names.append(f"rack {mode}"), p50.append(e["p50"]), p99.append(e["p99"])
    for name, st in doc["cpu"].items():
        names.append(name), p50.append(st["p50"]), p99.append(st["p99"])
    y = np.arange(len(names))
    ax2.barh(y - 0.2, p50, 0.4, label="p50")
    ax2.barh(y + 0.2, p99, 0.4, label="p99")
    ax2.set_yticks(y, names, fontsize=8)
    ax2.set_xscale("log")
    # decades labelled, minor ticks unlabelled: matplotlib's minor labels of a short log range overlap
    from matplotlib.ticker import LogLocator, NullFormatter

    ax2.xaxis.set_major_locator(LogLocator(base=10))
    ax2.xaxis.set_minor_formatter(NullFormatter())
    ax2.set_xlabel("latency per call (us)")
    ax2.set_title("rack vs CPU")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{doc.get('label') or ''} plan {doc['plan_hash']} on {doc['rack']}, {doc['time'][:19]}", fontsize=9)
    if compute:
        from harness.measure.compute_source import fpga_short

        notes = {c.get("fpga_note") for c in compute.values() if not c.get("fpga")}
        if len(notes) == 1 and not any(c.get("fpga") for c in compute.values()):  # one reason for all: say it once
            captions.append(f"FPGA compute: {notes.pop()}")
        else:
            captions.append("FPGA compute per partition: " + ", ".join(f"{p} {fpga_short(c)}" for p, c in compute.items()))
    fig.text(0.01, 0.01, "\n".join(captions), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 + 0.02 * len(captions), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(doc: Dict) -> str:
    """The bench document as JSON text (what --json writes)."""
    return json.dumps(doc, indent=1, default=_json_default)


def save(doc: Dict, path: Path) -> Path:
    """Write the bench document as JSON to `path` and the per-hop PNG beside it; returns the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(doc) + "\n")
    return plot(doc, path.with_suffix(".png"))


def write_incomplete(doc: Dict, path: Path) -> Path:
    """Write an incomplete bench document and its plot (every frame's end-to-end latency) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(doc) + "\n")
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
