"""The cold path: `splitrack verify` of ResNet-8 (MLPerf Tiny shape) cut over 3 boards, from an empty cache,
divided by the cold hls4ml compile of the whole model alone (target <= 1.5; issue 21).

Both run as fresh processes, one after the other, each with its own empty SPLITRACK_CACHE: verify compiles the
whole model and the three partitions (in parallel, splitting.hls.compile_projects) and runs both emulations;
the reference compiles the whole model only, as `hls4ml`'s convert + compile would.

    .venv/bin/python benchmarks/cold_verify.py [--out benchmarks/out] [--cuts b1_c1_relu,b2_relu] [-n 64]

Writes cold_verify.json in --out. Not a test: timings depend on the machine and its load (recorded).
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


def _timed(cmd, env, ok=(0,)):
    """(seconds, exit status) of a command; exits naming it when its status is not in `ok`."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode not in ok:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0, r.returncode


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
        print("[cold] compiling the whole model alone (empty cache) ...", file=sys.stderr, flush=True)
        whole, _ = _timed([PY, "-c", WHOLE, str(tmp / "plan")], dict(env, SPLITRACK_CACHE=str(tmp / "cache-whole")))
        print(f"[cold] whole model: {whole:.1f} s; now verify over 3 boards (empty cache) ...", file=sys.stderr,
              flush=True)
        # verify's FAIL (exit 1) is a finished run too: it compiled and ran everything (the untrained ResNet-8's
        # global average pooling overflows hls4ml's accumulator, which verify names); only its time is measured
        verify, status = _timed([PY, "-m", "harness.cli.commands", "verify", str(tmp / "plan"), "-n", str(args.n)],
                                dict(env, SPLITRACK_CACHE=str(tmp / "cache-verify")), ok=(0, 1))
    ratio = verify / whole
    res = {"model": "resnet8", "cuts": args.cuts, "boards": 3, "samples": args.n, "whole_compile_s": round(whole, 1),
           "cold_verify_s": round(verify, 1), "verify_verdict": "PASS" if status == 0 else "FAIL",
           "ratio": round(ratio, 2), "target": 1.5,
           "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_verify.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
