"""The four MLPerf Tiny reference shapes, planned over 2 to 5 PYNQ-Z2 boards, verified bit for bit against
hls4ml's emulation of the whole model, and run through the agents (issue 21's full sweep: dozens of hls4ml
compiles, nightly). The default run keeps the same behaviour on a small graph with a skip link
(test_graphs.py)."""
import re
import subprocess
import sys

import numpy as np
import pytest

from splitting.mlperf_tiny import ARCHITECTURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from splitting.mlperf_tiny import mlperf_tiny_model

    folder = tmp_path_factory.mktemp("mlperf")
    out = {}
    for name in ARCHITECTURES:
        out[name] = folder / f"{name}.keras"
        mlperf_tiny_model(name).save(out[name])
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_planned_over_n_boards_verified_and_run(model_files, name, n, tmp_path):
    """Exactly N partitions, verified bit-exact and run equal to the chained emulation - or, where the
    estimates' upper bounds do not fit N boards (issue 22's honest ranges: ResNet-8 needs 4 at ap_fixed<16,6>,
    DS-CNN 6, the autoencoder 14, MobileNetV1's dw8 fits none), a one-line refusal (exit 2) naming why:
    the fewest boards possible, above N, or the layer that fits no board."""
    from harness.jobs.run import run_local
    from splitting.plan import Plan
    from splitting.verify import verify_plan

    folder = tmp_path / "plan"
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "plan", str(model_files[name]), "--n-boards",
                        str(n), "-o", str(folder)], capture_output=True, text=True)
    if r.returncode == 2:
        lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("[plan]")]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        fewest = re.search(r"the fewest boards possible is (\d+)", lines[0])
        assert (fewest and int(fewest.group(1)) > n) or "does not fit a pynq-z2" in lines[0], lines[0]
        assert not (folder / "plan.json").exists()
        return
    assert r.returncode == 0, r.stderr[-2000:]
    plan = Plan.load(folder)
    assert len(plan.partitions) == n
    v = verify_plan(plan, n=32, log=lambda m: None)
    assert v.float_ok and v.hls_bit_exact, (v.float_rel_err, v.hls_chain_max_abs_err)
    x = np.random.default_rng(n).uniform(0, 1, (8,) + tuple(plan.model["input_shape"])).astype(np.float32)
    summary = run_local(plan, x, None, tmp_path / "run", progress=lambda m: None)
    assert summary["complete"] and summary["emulation_mismatches"] == 0
