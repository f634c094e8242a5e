"""What the numbers mean: `bench` and `run` on a virtual rack say, per partition, that a board's compute is this
machine's CPU running a bit-exact model (as the agent itself reports its backend), and show beside it the FPGA
compute of the RTL cosimulation (the real `splitrack cosim` flow on a tiny plan) or "not cosimulated (run: ...)"
when the plan was not cosimulated, never the virtual time as FPGA time."""
import json
import shutil

import numpy as np
import pytest

from harness.cli.commands import main


def _tiny_model():
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((6,), name="x")
    x = keras.layers.Dense(5, activation="relu", name="fc")(inp)
    return keras.Model(inp, keras.layers.Dense(3, name="fc2")(x), name="label_tiny")


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    """Two partitions (cut after fc), small enough to cosimulate in RTL in seconds."""
    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    plan, models = split_model(_tiny_model(), at=["fc"])
    folder = tmp_path_factory.mktemp("label") / "tiny"
    write_plan(plan, models, folder)
    return Plan.load(folder)


@pytest.fixture(scope="module")
def rack2(tmp_path_factory):
    from harness.rack.rackfile import load_rack
    from harness.rack.virtual_rack import rack_down, rack_up

    d = tmp_path_factory.mktemp("rack2")
    rack_up(2, d / "rack.toml", state=d / "state", name="label", progress=lambda s: None)
    try:
        yield load_rack(d / "rack.toml")
    finally:
        rack_down(d / "rack.toml")


def _bench(plan, rack):
    from harness.jobs.bench import bench

    return bench(plan, rack, frames=20, cpu=False, progress=lambda s: None)


def test_virtual_rack_bench_and_run_label_the_compute_then_show_the_cosimulated_fpga(tiny_plan, rack2, tmp_path):
    from harness.cosim import record
    from harness.jobs.bench import format_bench, save
    from harness.jobs.run import run_on_rack
    from harness.results import history

    cmd = f"splitrack cosim {tiny_plan.root}"
    assert not (tiny_plan.root / record.FILE).exists()
    # 1. not cosimulated: the labels, and the command that would make the FPGA figure
    doc = _bench(tiny_plan, rack2)
    assert list(doc["compute"]) == ["s0", "s1"]
    for p, c in doc["compute"].items():
        assert c["backend"] in ("fast", "emulation") and c["backend_reported_by_agent"] is True
        assert c["label"] in ("CPU: fast model", "CPU: hls4ml emulation") and "not the FPGA" in c["what"]
        assert c["board"] == doc["placement"][p]
        assert c["fpga"] is None and c["fpga_note"] == f"not cosimulated (run: {cmd})"
        if c["backend"] == "fast":  # the agent's own word on its check, in the legend too
            assert "== emulation library" in c["backend_note"] and c["backend_note"] in c["what"]
    text = format_bench(doc)
    compute_rows = [l for l in text.splitlines() if l.strip().startswith("board s0 compute")]
    assert compute_rows and all("not FPGA time" in l and "FPGA: not cosimulated" in l for l in compute_rows)
    assert f"FPGA: not cosimulated (run: {cmd})" in text
    assert "this machine's CPU running the partition's" in text
    # the field survives bench.json and goes into the history with the run
    save(doc, tmp_path / "bench.json")
    back = json.loads((tmp_path / "bench.json").read_text())
    assert back["compute"] == doc["compute"]
    run, _, _ = history.parse_bench(back)
    assert run.env["compute"]["s1"]["fpga_note"] == f"not cosimulated (run: {cmd})"

    lines = []
    x = np.random.default_rng(0).uniform(-1, 1, (12, 6))
    summary = run_on_rack(tiny_plan, rack2, x, None, tmp_path / "run", progress=lines.append)
    out = "\n".join(lines)
    assert "compute is" in out and "FPGA compute" in out
    assert f"FPGA compute: not cosimulated (run: {cmd})" in out and "not FPGA time" in out
    assert all(summary["partitions"][p]["compute"]["label"].startswith("CPU: ") for p in ("s0", "s1"))

    # 2. the real cosimulation flow (--no-write: the plan, and so its hash and deployment, stay as they are)
    assert main(["cosim", str(tiny_plan.root), "--sim", "icarus", "--frames", "4", "--no-write"]) == 0
    stored = json.loads((tiny_plan.root / record.FILE).read_text())
    assert stored["kind"] == record.KIND and stored["result"]["plan_hash"] == tiny_plan.hash and stored["result"]["ok"]
    assert stored["plan_key"] == record.plan_key(tiny_plan)
    doc = _bench(tiny_plan, rack2)
    clock = float(tiny_plan.hls_defaults.get("clock_period", 10))
    text = format_bench(doc)
    for p, c in doc["compute"].items():
        cyc = stored["result"]["partitions"][p]
        f = c["fpga"]
        assert c["fpga_note"] == "" and f["source"] == "RTL cosimulation (icarus, da4ml RTL)" and f["clock_ns"] == clock
        assert f["frame_latency_cycles"] == cyc["frame_latency"] and f["ii_cycles"] == cyc["ii"]
        assert f["frame_latency_us"] == pytest.approx(cyc["frame_latency"] * clock / 1e3)
        assert (f"FPGA: RTL cosimulation (icarus, da4ml RTL): frame latency {cyc['frame_latency']:.0f} cycles = "
                f"{cyc['frame_latency'] * clock / 1e3:.2f} us, II in the chain {cyc['ii']:.0f} cycles") in text
        assert c["label"].startswith("CPU: ")  # the board's own figure is still the CPU's, beside the FPGA's
    assert "not cosimulated" not in text
    lines.clear()
    run_on_rack(tiny_plan, rack2, x, None, tmp_path / "run2", progress=lines.append)
    assert "FPGA (RTL cosim)" in "\n".join(lines) and "not cosimulated" not in "\n".join(lines)


def test_stored_cosim_of_another_plan_version_failed_or_damaged_is_not_shown(tiny_plan, tmp_path):
    """Figures only for a passed cosimulation of this very plan: anything else says why, with the command."""
    from harness.cosim import record
    from harness.cosim.cosim import CosimResult, PartitionFigures
    from splitting.plan import Plan

    folder = tmp_path / "plan"
    shutil.copytree(tiny_plan.root, folder)
    plan = Plan.load(folder)
    figs = {p: PartitionFigures(p, 4, 1, 10.0, 7, 12, 5.0, "ok") for p in ("s0", "s1")}

    def result(plan_hash, ok=True):
        return CosimResult(plan_hash, "icarus", 4, ok, ok, [], figs, [], 23.0, 5.0, 100, 1.0, 0.5, 0.1, [])

    record.write(result(plan.hash), plan)
    got = record.read(plan)
    assert got.missing == "" and got.figures["s0"].frame_latency == 12 and got.figures["s1"].us(12) == pytest.approx(0.12)
    # what the cosimulation writes into the plan (FIFO depths, a note), or the same split written again without
    # them, is still the plan that was cosimulated
    for link in plan.links:
        link.fifo_depth = 16
    plan.notes.append("cosim: link fifo_depth = ...")
    plan.save(folder)
    assert record.read(Plan.load(folder)).figures["s0"].frame_latency == 12
    plan.hls_defaults["clock_period"] = 5  # another clock is another plan (and its cycles take other time)
    plan.save(folder)
    plan = Plan.load(folder)
    got = record.read(plan)
    assert not got.figures and "not cosimulated in this version of the plan" in got.missing
    assert f"run: splitrack cosim {folder}" in got.missing
    record.write(result(plan.hash, ok=False), plan)
    assert "failed its checks" in record.read(plan).missing and not record.read(plan).figures
    for bad in ("{not json", json.dumps({"kind": record.KIND, "version": 1, "plan_key": record.plan_key(plan),
                                         "result": {"plan_hash": plan.hash, "ok": True, "partitions": {"s0": {"ii": "x"}}}}),
                json.dumps([1, 2]), json.dumps({"kind": record.KIND, "version": 99}),
                json.dumps({"kind": record.KIND, "version": 1, "result": {"plan_hash": plan.hash, "ok": True,
                                                                         "partitions": {}}})):  # no plan_key
        (folder / record.FILE).write_text(bad)
        got = record.read(plan)
        assert not got.figures and "unreadable" in got.missing and f"run: splitrack cosim {folder}" in got.missing


def test_overlay_and_timing_model_are_named():
    from harness.measure.compute_source import ComputeSource, format_sources, hop_notes

    real = ComputeSource("s0", "pynq0", "overlay", True, None, None, "not cosimulated (run: splitrack cosim p)").to_dict()
    paced = ComputeSource("s1", "vb1", "emulation", False, {"cycles": 1200, "clock_mhz": 100.0}, None, "x").to_dict()
    text = format_sources({"s0": real, "s1": paced})
    assert "s0 on pynq0: PYNQ-Z2 overlay" in text and "hls4ml emulation library" in text
    assert "as configured; the agent did not say" in text and "paced to at least 1200 cycles at 100 MHz" in text
    notes = hop_notes({"s0": real, "s1": paced})
    assert notes["board s0 compute"].startswith("FPGA: PYNQ-Z2 overlay;") and "not FPGA time" not in notes["board s0 compute"]
    assert notes["board s1 compute"].startswith("CPU: hls4ml emulation (configured) (paced to the plan's cycle estimate), "
                                                "not FPGA time")  # the agent did not say which backend it runs


def test_old_bench_document_and_run_json_without_the_fields_still_load_and_print(tmp_path):
    from synthetic_history import bench_doc

    from harness.jobs.bench import format_bench, plot
    from harness.results import history

    doc = bench_doc(0)
    assert "compute" not in doc
    run, rows, _ = history.parse_bench(doc)
    assert rows and "compute" not in run.env
    doc["clocks"], doc["cpu"] = {}, {}  # the synthetic document's CPU figures lack what format_reference prints
    text = format_bench(doc)
    assert "board s1" in text and "what \"board P compute\" is" not in text and "FPGA" not in text
    assert plot(doc, tmp_path / "old.png").is_file()
    old_run = {"summary": {"kind": history.RUN_KIND, "plan": "p1", "label": "x", "model": "m", "where": "rack r",
                           "time": "2026-03-01T03:00:00+00:00", "machine": "m1", "commit": "c1", "frames": 2,
                           "frames_received": 2, "complete": True, "error": None, "throughput_fps": 10.0,
                           "latency_us": {"p50": 1.0}, "partitions": {"s0": {"board": "b0", "dwell_us": {"p50": 2.0},
                                                                             "compute_us": {"p50": 1.0}}}},
               "frames": []}
    run, rows, _ = history.parse_run(old_run)
    assert "compute" not in run.env and any(r.metric == "run dwell p50" for r in rows)
    bad = dict(bench_doc(1), compute={"s0": "CPU"})
    with pytest.raises(history.HistoryError, match="compute"):
        history.parse_bench(bad)


def test_history_keeps_the_compute_source_and_the_run_page_shows_it(tmp_path):
    """A bench document with "compute" and an older one without it share a history; the newer run's page says
    what each board computed on and the FPGA compute beside it, the older one's page still renders."""
    from synthetic_history import PLACEMENT, bench_doc

    from harness.measure.compute_source import ComputeSource
    from harness.results import dashboard, history

    fpga = {"source": "RTL cosimulation (icarus, da4ml RTL)", "clock_ns": 10.0, "frame_latency_cycles": 12.0,
            "frame_latency_us": 0.12, "ii_cycles": 5.0, "ii_us": 0.05}
    new = bench_doc(1)
    new["compute"] = {p: ComputeSource(p, b, "fast", True, None, fpga if p == "s0" else None,
                                       "" if p == "s0" else "not cosimulated (run: splitrack cosim plan/)").to_dict()
                      for p, b in PLACEMENT.items()}
    with history.History(tmp_path / "h.sqlite") as h:
        h.add_run(*history.parse_bench(bench_doc(0)))
        h.add_run(*history.parse_bench(new))
        old_run, new_run = h.run_infos()
        assert "compute" not in old_run.env and new_run.env["compute"] == new["compute"]
        page, _ = dashboard.build_run(h, new_run, old_run)
        assert "<h2>What a board's compute is</h2>" in page
        assert "this machine&#x27;s CPU running the partition&#x27;s bit-exact fast model" in page
        assert "frame latency 12 cycles = 0.12 us, II in the chain 5 cycles = 0.05 us at 10 ns (100 MHz)" in page
        assert "not cosimulated (run: splitrack cosim plan/)" in page
        old_page, _ = dashboard.build_run(h, old_run, None)
        assert "What a board" not in old_page


def test_a_fast_model_that_fell_back_says_why(tiny_plan, monkeypatch):
    """A virtual board configured for the fast model whose agent runs the emulation library (its check found a
    difference): the compute is labelled as the emulation, with the agent's reason beside it."""
    from types import SimpleNamespace

    import harness.rack.agent_control as deploy_mod
    from harness.measure.compute_source import compute_sources

    why = "3 output values differ from the emulation library on 4 check frames"
    pongs = {"s0": {"backend": "emulation", "backend_note": why}, "s1": {"backend": "fast"}}  # s1: an older agent
    monkeypatch.setattr(deploy_mod, "ping", lambda host, port, secret, timeout, ident: pongs["s%d" % (port - 9000)])
    wiring = SimpleNamespace(secret=b"k" * 32, configs={p: {"backend": {"kind": "fast"}} for p in ("s0", "s1")},
                             endpoints={p: SimpleNamespace(board="b" + p, host="127.0.0.1", port=9000 + i)
                                        for i, p in enumerate(("s0", "s1"))},
                             agent_id=lambda p: p.encode(), host_id=lambda: b"host")
    src = {k: v.to_dict() for k, v in compute_sources(tiny_plan, wiring).items()}
    assert src["s0"]["backend"] == "emulation" and src["s0"]["label"] == "CPU: hls4ml emulation"
    assert src["s0"]["backend_note"] == why and why in src["s0"]["what"]
    assert src["s1"]["backend"] == "fast" and src["s1"]["backend_note"] == "" and "(" not in src["s1"]["what"][-2:]
