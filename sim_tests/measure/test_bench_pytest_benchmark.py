"""pytest-benchmark with splitrack's extra_info, on local agents: its JSON carries the per-hop breakdown and
the plan hash (and `history add` imports it), --benchmark-compare works, and --benchmark-compare-fail
catches a board that became slower (a timing model switched on by the environment).

Nothing here depends on how busy the machine is: the comparison of two ordinary runs is checked to work, not
to pass a timing gate, and the slow board's added time is chosen from the stored baseline's own median (at
least 50 times it), which the agent's pacer keeps as a floor, so the gate must fire."""
import json
import subprocess
import sys
from pathlib import Path

from harness.results import history

INNER = '''
import os
import sys
import numpy as np
sys.path.insert(0, SIM_TESTS)  # the tests' helpers (identity_plan)
from harness.measure import attribution as measure
from harness.measure.compute_source import compute_sources
from harness.rack.local_rack import LocalRack
from identity_plan import identity_plan
from harness.measure.stream import Pipeline


def test_rack_frame(benchmark, tmp_path):
    plan = identity_plan(stages=2, shape=(64,))
    slow = {"s1": {"cycles": int(os.environ["SLOW_S1"]), "clock_mhz": 100}} if os.environ.get("SLOW_S1") else None
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64))
    got = []
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(plan, "passthrough", timing=slow)
        with Pipeline(wiring) as pipe:
            before = measure.clock_offsets(pipe, wiring, 20)
            benchmark.pedantic(lambda: got.append(pipe.stream(x, in_flight=1)), rounds=30, warmup_rounds=2)
            after = measure.clock_offsets(pipe, wiring, 20)
        compute = {p: c.to_dict() for p, c in compute_sources(plan, wiring).items()}  # asked of the running agents
    frames = [t for r in got[2:] for t in r.timings()]
    benchmark.extra_info.update(measure.benchmark_extra_info(plan, "local", wiring, frames, before, after, compute))
'''


def run(tmp_path, *args, slow_cycles=0):
    from child_env import child_env

    env = child_env(**({"SLOW_S1": str(slow_cycles)} if slow_cycles else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(tmp_path / "test_inner.py"), f"--benchmark-storage=file://{tmp_path / 'store'}", *args],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)


def test_json_compare_and_compare_fail(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER.replace("SIM_TESTS", repr(str(Path(__file__).resolve().parents[1]))))
    out = tmp_path / "out.json"
    r = run(tmp_path, "--benchmark-autosave", f"--benchmark-json={out}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    extra = json.loads(out.read_text())["benchmarks"][0]["extra_info"]
    assert extra["rack"] == "local" and len(extra["plan_hash"]) == 16
    assert set(extra["breakdown_p50_us"]) == {"link host->s0", "board s0", "link s0->s1", "board s1", "link s1->host"}
    rows = history.rows_from_file(out)
    assert any(r.hop == "board s1" and r.metric == "pytest test_rack_frame p50" for r in rows)
    # what each board's compute was goes with the run, as the agents reported it
    assert extra["compute"]["s1"]["backend"] == "passthrough" and extra["compute"]["s1"]["label"] == "none: passthrough"
    assert extra["compute"]["s1"]["backend_reported_by_agent"] is True
    (run_info, _, _), = history.load_file(out)
    assert run_info.env["compute"] == extra["compute"]
    # the same rack again: the comparison against the stored run works (no gate: two runs of a busy machine
    # may differ by any factor)
    r = run(tmp_path, "--benchmark-compare")
    assert r.returncode == 0 and "Comparing against" in r.stdout + r.stderr, r.stdout[-3000:]
    # board s1 now takes at least 50 x the stored median per frame (and at least 2 ms): a 1000 % gate fails,
    # and the per-hop breakdown says where
    median_us = json.loads(out.read_text())["benchmarks"][0]["stats"]["median"] * 1e6
    added_us = max(2000.0, 50 * median_us)
    slow_json = tmp_path / "slow.json"
    r = run(tmp_path, "--benchmark-compare", "--benchmark-compare-fail=median:1000%", f"--benchmark-json={slow_json}",
            slow_cycles=int(added_us * 100))  # cycles at 100 MHz
    assert r.returncode != 0 and "Performance has regressed" in r.stdout + r.stderr, r.stdout[-3000:]
    slow_extra = json.loads(slow_json.read_text())["benchmarks"][0]["extra_info"]
    assert slow_extra["hops"]["board s1"]["p50"] >= added_us - 5 > extra["hops"]["board s1"]["p50"]
