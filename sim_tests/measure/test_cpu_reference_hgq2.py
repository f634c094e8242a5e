"""The CPU reference of bench and the demo loads the plan's whole model the way `split` does: an HGQ2 model
(whose layers register only once `hgq` is imported) gets its Keras timings in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import json, sys
import numpy as np
from harness.measure import cpu_reference
from splitting.plan import Plan
plan = Plan.load(sys.argv[1])
x = np.load(sys.argv[2])["x"][:8]
ref = cpu_reference.reference(plan, x, 4, repeats=3)
print(json.dumps(sorted(ref["cpu"])))
"""


def test_cpu_reference_of_an_hgq2_plan(field_cases, tmp_path):
    pytest.importorskip("hgq")
    from splitting.graph import load_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(load_model(field_cases / "hgq2_mlp.keras"), at=["qd1"])
    write_plan(plan, models, tmp_path / "p")
    r = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "p"), str(field_cases / "hgq2_mlp.npz")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    keys = json.loads(r.stdout.strip().splitlines()[-1])
    assert "hls4ml emulation" in keys and any(k.startswith("keras") for k in keys), keys
