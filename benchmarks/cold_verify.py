"""The cold path: `splitrack verify` of ResNet-8 (MLPerf Tiny shape) cut over 3 boards, from an empty cache,
divided by the cold hls4ml compile of the whole model alone (target <= 1.5; issue 21).

Both run as fresh processes, one after the other, each with its own empty SPLITRACK_CACHE: verify compiles the
whole model and the three partitions (in parallel, splitting.hls.start_projects) and runs both emulations while
the builds go on (splitting.emulation_schedule); the reference compiles the whole model only, as `hls4ml`'s
convert + compile would.

Beside the wall clocks it counts CPU (user + system of each command and every process it waited for: g++, the
emulations), and the **CPU floor** of verify = its CPU / cores: the least time any scheduling of the same work
could take on this machine. floor_ratio is that floor over the reference's CPU (the reference runs one step
after another: on an idle machine its wall clock is its CPU), the best ratio any scheduling could reach here
whatever the load. verify runs with its
phases recorded (conversions, g++ builds, emulation slices, Keras checks; functions wrapped in the benchmark's
own process, nothing in splitrack changed), drawn as a timeline in cold_verify_timeline.png.

    .venv/bin/python benchmarks/cold_verify.py [--out benchmarks/out] [--cuts b1_c1_relu,b2_relu] [-n 64]

Writes cold_verify.json and cold_verify_timeline.png in --out. Not a test: timings depend on the machine and
its load (recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

WHOLE = """
import sys
from pathlib import Path
from splitting.plan import Plan
from splitting.hls import compiled, monolithic_hls_config
plan = Plan.load(sys.argv[1])
src = plan.path(plan.model.get("hls_source") or plan.model["source"])
sha = plan.model.get("hls_source_weights_sha256") or plan.model["weights_sha256"]
compiled(src, sha, monolithic_hls_config(plan), plan.hls_defaults, "sr_whole")
"""


# verify as the CLI runs it, with its phases recorded: (what, start s, end s) from the process's start, written
# to argv[1] as JSON; the functions are wrapped here, in the benchmark's process, never in splitrack
VERIFY = """
import json, sys, threading, time
T0 = time.perf_counter()
spans, lock = [], threading.Lock()
def span(what, t):
    with lock:
        spans.append((what, round(t - T0, 2), round(time.perf_counter() - T0, 2)))
def wrap(mod, name, label):
    f = getattr(mod, name, None)
    if f is None:
        return
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            span(label(a), t)
    setattr(mod, name, g)
t = time.perf_counter()
import keras, hls4ml
from harness.cli.commands import main
from splitting import chain, diagnose, emulation_schedule, hls, split, verify
span("import TensorFlow, Keras, hls4ml", t)
wrap(split, "load_models", lambda a: "load Keras models")
wrap(hls, "_convert_project", lambda a: "convert " + a[0].project)
wrap(hls, "_build", lambda a: "g++ " + a[0].project)
wrap(diagnose, "traced_run", lambda a: "emulate " + (a[1] and "sr_" + a[1] or "sr_whole"))
emulation_schedule.traced_run = diagnose.traced_run
wrap(chain, "run_chain", lambda a: "chain (Keras float, or the emulated outputs put together)")
wrap(verify, "layer_peaks", lambda a: "Keras: layer peaks")
wrap(diagnose, "check_scope", lambda a: "Keras: layer checks " + (a[2] or "whole"))
try:
    code = main(["verify"] + sys.argv[2:])
finally:
    json.dump(spans, open(sys.argv[1], "w"))
sys.exit(code)
"""


def _timed(cmd, env, ok=(0,)):
    """(seconds, exit status, CPU seconds) of a command: CPU is user + system of it and of every process it
    waited for (RUSAGE_CHILDREN); exits naming it when its status is not in `ok`."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in ok:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall, r.returncode, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


def _plot_timeline(spans, wall: float, whole: float, floor: float, path: Path) -> None:
    """A timeline of verify's phases (one row per kind of work), the reference's wall clock, the 1.5x target
    and verify's CPU floor marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({s[0] for s in spans}, key=lambda w: min(s[1] for s in spans if s[0] == w))
    fig, ax = plt.subplots(figsize=(10, 0.25 * len(rows) + 1.6))
    for i, what in enumerate(rows):
        bars = [(a, b - a) for w, a, b in spans if w == what]
        ax.broken_barh(bars, (i - 0.4, 0.8), color="C1" if what.startswith("g++") else
                       "C0" if what.startswith("emulate") else "C2" if "Keras" in what else "C7")
        for a, d in bars:  # overlapping slices of one kind: how many ran at once shows as darker
            ax.plot([a, a], [i - 0.4, i + 0.4], color="k", lw=0.5)
    ax.axvline(whole, color="k", ls="--", lw=1, label=f"whole-model compile alone: {whole:.1f} s")
    ax.axvline(1.5 * whole, color="r", ls=":", lw=1, label=f"target 1.5x: {1.5 * whole:.1f} s")
    ax.axvline(wall, color="C3", lw=1, label=f"cold verify (process): {wall:.1f} s")
    ax.axvline(floor, color="C4", ls="-.", lw=1, label=f"verify's CPU floor (CPU / cores): {floor:.1f} s")
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since verify's process started")
    ax.set_title("cold verify of ResNet-8 over 3 boards: what runs when")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--cuts", default="b1_c1_relu,b2_relu", help="split --at (default: one cut inside a branch)")
    ap.add_argument("-n", type=int, default=64, help="samples verify runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cold-verify-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, SPLITRACK_CACHE=str(tmp / "models-cache"))
        subprocess.run([PY, "-c", "from splitting.mlperf_tiny import mlperf_tiny_model as m; "
                        f"m('resnet8').save({str(tmp / 'resnet8.keras')!r})"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        subprocess.run([PY, "-m", "harness.cli.commands", "split", str(tmp / "resnet8.keras"), "--at", args.cuts,
                        "-o", str(tmp / "plan")], cwd=ROOT, env=env, check=True, capture_output=True)
        load0 = os.getloadavg()
        print("[cold] compiling the whole model alone (empty cache) ...", file=sys.stderr, flush=True)
        whole, _, whole_cpu = _timed([PY, "-c", WHOLE, str(tmp / "plan")],
                                     dict(env, SPLITRACK_CACHE=str(tmp / "cache-whole")))
        print(f"[cold] whole model: {whole:.1f} s; now verify over 3 boards (empty cache) ...", file=sys.stderr,
              flush=True)
        # verify's FAIL (exit 1) is a finished run too: it compiled and ran everything (the untrained ResNet-8's
        # global average pooling overflows hls4ml's accumulator, which verify names); only its time is measured
        verify, status, verify_cpu = _timed([PY, "-c", VERIFY, str(tmp / "spans.json"), str(tmp / "plan"), "-n",
                                             str(args.n)], dict(env, SPLITRACK_CACHE=str(tmp / "cache-verify")),
                                            ok=(0, 1))
        spans = json.loads((tmp / "spans.json").read_text())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    phases = {}
    for what, a, b in spans:  # seconds of each kind of work, summed over its runs (CPU-bound: about its CPU)
        kind = what.split(" sr_")[0]
        phases[kind] = round(phases.get(kind, 0.0) + b - a, 1)
    res = {"model": "resnet8", "cuts": args.cuts, "boards": 3, "samples": args.n, "whole_compile_s": round(whole, 1),
           "cold_verify_s": round(verify, 1), "verify_verdict": "PASS" if status == 0 else "FAIL",
           "ratio": round(verify / whole, 2), "target": 1.5,
           "whole_compile_cpu_s": round(whole_cpu, 1), "cold_verify_cpu_s": round(verify_cpu, 1),
           "cpu_floor_s": round(verify_cpu / cpus, 1), "floor_ratio": round(verify_cpu / cpus / whole_cpu, 2),
           "phase_seconds": phases, "cpus": cpus, "loadavg_before": load0, "loadavg": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_verify.json").write_text(json.dumps(res, indent=1) + "\n")
    _plot_timeline(spans, verify, whole, verify_cpu / cpus, out / "cold_verify_timeline.png")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
