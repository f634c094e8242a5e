"""The four MLPerf Tiny reference shapes end to end: planned over N PYNQ-Z2 boards, verified, run and
benchmarked on an N-board virtual rack, beside Keras (issue 21's table).

    .venv/bin/python benchmarks/mlperf_tiny.py [--models resnet8,dscnn,ad,vww] [--n-boards 3] [--frames 50]
                                               [--out benchmarks/out]

Per model and N: `splitrack plan MODEL --n-boards N` (what was cut, the estimated FPGA latency with its
range), `verify` (chained Keras vs the model, chained hls4ml emulation vs hls4ml's emulation of the whole model,
64 random samples), then a fresh N-board virtual rack: `bench` deploys the plan, streams --frames frames
single and pipelined (every answer checked against the chained emulation) and measures the CPU reference
(Keras batch 1) on this machine beside it. A virtual board's compute is this machine's CPU running the
partition's bit-exact model (the fast model, or hls4ml's C emulation where the fast model lacks a layer: the
"virtual boards ran" column), not an FPGA: the rack column measures splitrack's path on this CPU, the
estimate column is the planner's FPGA figure. Writes mlperf_tiny.json and mlperf_tiny.md (the table) in
--out. A model the planner refuses for N boards is a row saying why, not a failure of the others.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitting.quiet_tensorflow import quiet  # noqa: E402  (library start-up noise to the library log, as the CLI)

quiet()


def say(msg: str) -> None:
    print(f"[mlperf] {msg}", file=sys.stderr, flush=True)


def plan_model(model_file: Path, n: int, folder: Path) -> dict:
    """The plan's --json document, or {"refused": one line}."""
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "plan", str(model_file), "--n-boards", str(n),
                        "-o", str(folder), "--json"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        return {"refused": lines[-1] if lines else f"exit {r.returncode}"}
    return json.loads(r.stdout)


def one(name: str, n: int, frames: int, tmp: Path) -> dict:
    from harness.jobs.bench import bench
    from harness.rack.rackfile import load_rack
    from harness.rack.virtual_rack import rack_down, rack_up
    from splitting.mlperf_tiny import mlperf_tiny_model
    from splitting.plan import Plan
    from splitting.verify import verify_plan

    row = {"model": name, "boards": n}
    model_file = tmp / f"{name}.keras"
    if not model_file.exists():
        mlperf_tiny_model(name).save(model_file)
    t0 = time.perf_counter()
    doc = plan_model(model_file, n, tmp / f"{name}-{n}")
    row["plan_s"] = round(time.perf_counter() - t0, 1)
    if "refused" in doc:
        row["refused"] = doc["refused"]
        say(f"{name} over {n}: plan refused: {doc['refused']}")
        return row
    row.update(cut_after=doc["cut_after"], neurons=doc["neurons"], inputs=doc["inputs"],
               est_latency_us=doc["latency_us"], est_latency_range_us=[doc["range"]["low"]["latency_us"],
                                                                    doc["range"]["high"]["latency_us"]])
    plan = Plan.load(tmp / f"{name}-{n}")
    row["partitions"] = len(plan.partitions)
    say(f"{name} over {n}: {len(plan.partitions)} partitions, cut after {', '.join(doc['cut_after']) or '-'}; verifying")
    t0 = time.perf_counter()
    v = verify_plan(plan, n=64, log=lambda m: say(f"  {m.strip()}") if "compiled" in m else None)
    row.update(verify="PASS" if v.ok else "FAIL", hls_bit_exact=v.hls_bit_exact, float_ok=v.float_ok,
               verify_s=round(time.perf_counter() - t0, 1), cause=v.cause)
    rack_file = tmp / f"rack-{name}-{n}.toml"
    say(f"{name} over {n}: verify {row['verify']}; starting a {n}-board virtual rack and benchmarking {frames} frames")
    rack_up(n, rack_file, progress=lambda m: None)
    try:
        b = bench(plan, load_rack(rack_file), frames=frames, data="random", progress=lambda m: None,
                  label=f"mlperf-{name}-{n}")
    finally:
        rack_down(rack_file)
    single = b["reports"]["single"]["stats"]["e2e"]
    mism = b.get("emulation_mismatches")
    mism = sum(mism.values()) if isinstance(mism, dict) else mism  # per mode (single, stream)
    row.update(complete=bool(b["complete"]), emulation_mismatches=mism,
               compute=sorted({c.get("label", "?") for c in (b.get("compute") or {}).values()}),
               rack_e2e_p50_us=round(single["p50"], 1), rack_e2e_p90_us=round(single["p90"], 1),
               stream_throughput_hz=round(b["reports"]["stream"]["throughput_hz"], 1),
               keras_batch1_p50_us=round(b["cpu"]["keras batch 1"]["p50"], 1),
               hls4ml_emulation_p50_us=round(b["cpu"]["hls4ml emulation"]["p50"], 1))
    say(f"{name} over {n}: rack e2e p50 {row['rack_e2e_p50_us']} us, Keras batch 1 p50 {row['keras_batch1_p50_us']} us, "
        f"mismatches {row['emulation_mismatches']}")
    return row


def markdown(rows) -> str:
    out = ["| model | boards | cut after | verify | rack: answers equal to the chained emulation | virtual boards ran | "
           "e2e p50 on the virtual rack (us) | Keras batch 1 p50 (us) | planner's FPGA latency estimate (us) [range] |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['model']} | {r['boards']} | refused: {r['refused']} | | | | | | |")
            continue
        cut = ", ".join(r["cut_after"]) or "-"
        extra = "".join(f"; {k} split {v}" for k, v in (("neuron", r["neurons"]), ("input", r["inputs"])) if v)
        lo, hi = r["est_latency_range_us"]
        out.append(f"| {r['model']} | {r['boards']} | {cut}{extra} | {r['verify']}"
                   f"{' (bit exact)' if r['hls_bit_exact'] else ''} | "
                   f"{'all' if r['complete'] and r['emulation_mismatches'] == 0 else 'NO'} ({r['emulation_mismatches']} mismatches) | "
                   f"{', '.join(r['compute'])} | "
                   f"{r['rack_e2e_p50_us']:.0f} | {r['keras_batch1_p50_us']:.0f} | {r['est_latency_us']:.0f} [{lo:.0f}-{hi:.0f}] |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8,dscnn,ad,vww")
    ap.add_argument("--n-boards", default="3", help="N, or a list: 2,3,4,5")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = ap.parse_args()
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mlperf-") as tmp:
        for name in args.models.split(","):
            for n in [int(x) for x in args.n_boards.split(",")]:
                rows.append(one(name, n, args.frames, Path(tmp)))
    res = {"rows": rows, "seconds": round(time.time() - t0), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mlperf_tiny.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "mlperf_tiny.md").write_text(markdown(rows))
    print(markdown(rows))
    bad = [r for r in rows if "refused" in r or r.get("verify") != "PASS" or r.get("emulation_mismatches") != 0]
    say(f"{len(rows) - len(bad)}/{len(rows)} planned, verified and run equal to the chained emulation "
        f"in {res['seconds']} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
