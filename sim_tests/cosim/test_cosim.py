"""RTL cosimulation of plans (harness.cosim): bit-exact reference, da4ml RTL in the AXI-stream shell, chained
through link FIFOs, checked beat by beat against the plan's hls4ml emulation; protocol mutants must fail.

Small hand-built models here (CI); the reference models are in test_cosim_reference.py under `slow`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cosim.fixed import cast
from splitting.contract import ROUNDING_MODES, SATURATION_MODES, FixedType

pytestmark = pytest.mark.cosim


# --- integer fixed point against the contract's float quantiser (independent implementations) ------------
@settings(max_examples=300, deadline=None)
@given(raw=st.integers(-(1 << 30), 1 << 30), frac=st.integers(0, 24), width=st.integers(2, 24),
       integer=st.integers(-2, 12), signed=st.booleans(), rnd=st.sampled_from(ROUNDING_MODES),
       sat=st.sampled_from(SATURATION_MODES))
def test_integer_cast_matches_contract_quantiser(raw, frac, width, integer, signed, rnd, sat):
    t = FixedType(width, integer, signed, rnd, sat)
    want = t.to_raw(np.array([raw * 2.0 ** -frac]))
    assert cast(np.array([raw]), frac, t).tolist() == want.tolist()


# --- a small model, cut all three ways ----------------------------------------------------------------
def _small_model():
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((12,), name="x")
    x = keras.layers.Dense(9, activation="relu", name="fc1")(inp)
    x = keras.layers.Dense(7, activation="relu", name="fc2")(x)
    x = keras.layers.Dense(5, name="fc3")(x)
    return keras.Model(inp, x, name="cosim_small")


@pytest.fixture(scope="module")
def small_plan(tmp_path_factory):
    """fc1 neuron-split in 2, fc2 input-split in 2 (+ join), fc3 after a sequential cut: six partitions."""
    from splitting.split import split_model, write_plan
    from splitting.plan import Plan

    plan, models = split_model(_small_model(), neurons={"fc1": 2}, inputs={"fc2": 2})
    folder = tmp_path_factory.mktemp("plan") / "small"
    write_plan(plan, models, folder)
    plan = Plan.load(folder)
    kinds = {p.kind for p in plan.partitions.values()}
    assert kinds == {"neuron", "input", "join", "layers"}, kinds
    return plan


@pytest.fixture(scope="module")
def chain_results(small_plan):
    """The chained cosimulation under both simulators (Verilator builds once per content, then cached)."""
    from harness.cosim.cosim import cosimulate

    out = {}
    for sim in ("verilator", "icarus"):
        out[sim] = cosimulate(small_plan, sim, n_frames=8, write_depths=(sim == "verilator"))
        print(out[sim].summary())
    return out


def test_reference_matches_hls4ml_emulation(small_plan):
    from harness.cosim.cosim import default_frames
    from harness.cosim.ops import partition_ops
    from harness.cosim.bitexact import Reference, compare_with_emulation
    from splitting import hls
    from splitting.chain import emulation_runner, run_chain
    from splitting.contract import assemble

    x = default_frames(small_plan, 40, seed=3)
    keep = {}
    run_chain(small_plan, x, emulation_runner(small_plan), keep=keep)
    keep["host"] = x
    for part in small_plan.ordered_partitions():
        links = small_plan.inputs_of(part.name)
        inp = assemble(links, [c.take(keep[c.src]) for c in links])
        a = compare_with_emulation(part.name, Reference(partition_ops(small_plan, part.name)),
                                   hls.emulation(small_plan, part.name), inp)
        assert a.exact, a.line()


def test_reference_check_can_fail(small_plan):
    """The agreement check is not vacuous: a reference with a wider accumulator than hls4ml's disagrees."""
    from harness.cosim.cosim import default_frames
    from harness.cosim.ops import partition_ops
    from harness.cosim.bitexact import Reference, compare_with_emulation
    from splitting import hls

    name = small_plan.ordered_partitions()[0].name
    ops = partition_ops(small_plan, name)
    dense = next(op for op in ops if op.kind == "dense")
    dense.accum = FixedType(40, 20)  # hls4ml truncates every product to ap_fixed<16,6>; this one does not
    x = default_frames(small_plan, 40, seed=4)
    a = compare_with_emulation(name, Reference(ops), hls.emulation(small_plan, name), x)
    assert not a.exact and a.max_lsb >= 1, a.line()


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_chain_matches_emulation_bit_for_bit(chain_results, sim):
    r = chain_results[sim]
    assert r.violations == []
    assert r.outputs_match and r.ok
    assert set(r.partitions) == {"s0_0", "s0_1", "s1_0", "s1_1", "s2", "s3"}
    for p in r.partitions.values():
        # the shell waits the core's pipeline depth; the beats in and out come on top
        assert p.latency is not None and p.latency >= p.core_latency
        assert p.ii is not None and p.ii >= 1
    assert r.chain_latency > sum(p.core_latency for p in r.partitions.values() if "_1" not in p.name)


def test_simulators_agree_cycle_for_cycle(chain_results):
    """Same RTL, same seeded stimulus: Verilator and Icarus must measure the same cycles."""
    v, i = chain_results["verilator"], chain_results["icarus"]
    assert v.sim_cycles == i.sim_cycles
    assert {k: (p.latency, p.ii) for k, p in v.partitions.items()} == {k: (p.latency, p.ii) for k, p in i.partitions.items()}
    assert [l.high_water for l in v.links] == [l.high_water for l in i.links]


def test_fifo_depths_kept_as_tuning_beside_the_plan(chain_results, small_plan):
    """The depths tune the plan for the RTL target: kept in tuning.json, the plan (and its hash) untouched."""
    from harness.cosim import record
    from splitting.plan import Plan

    r = chain_results["verilator"]
    saved = Plan.load(small_plan.root)
    assert saved.hash == small_plan.hash == r.plan_hash  # not another experiment
    assert all(c.fifo_depth is None for c in saved.links) and not any("fifo" in n for n in saved.notes)
    assert any("FIFO depths written into" in n and "plan hash " + saved.hash + " unchanged" in n for n in r.notes)
    tuned = record.read_tuning(saved)
    assert tuned.why == "" and set(tuned.fifo_depths) == set(range(len(saved.links)))
    for link in r.links:
        assert tuned.fifo_depths[link.index] == link.recommended_depth
        peak = max(link.high_water.values())
        assert peak <= link.sim_depth and not link.saturated
        assert link.recommended_depth >= max(peak, 2) and link.recommended_depth & (link.recommended_depth - 1) == 0
    # the next cosimulation (icarus, after verilator) built its FIFOs with the tuned depths
    assert [l.sim_depth for l in chain_results["icarus"].links] == [l.recommended_depth for l in r.links]
    summary = record.tuning_summary(saved)
    assert set(summary["fifo_depths"]) == {f"{c.src}->{c.dst}" for c in saved.links} and summary["hash"]
    # random stalls make the links buffer more than a steady stream does
    assert sum(l.high_water["stress"] for l in r.links) > sum(l.high_water["measure"] for l in r.links)


# --- convolution: da4ml kernel + our pixel sequencer ----------------------------------------------------
@pytest.fixture(scope="module")
def conv_plan(tmp_path_factory):
    import keras

    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 2), name="img")
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(4, 3, padding="valid", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(4, name="fc")(x)
    plan, models = split_model(keras.Model(inp, x, name="cosim_conv"), at=("conv1",), neurons={"fc": 2})
    folder = tmp_path_factory.mktemp("plan") / "conv"
    write_plan(plan, models, folder)
    return Plan.load(folder)


def test_conv_chain_matches_emulation(conv_plan):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(conv_plan, "icarus", n_frames=4)
    print(r.summary())
    assert r.ok and r.outputs_match and not r.violations
    segs = {p.name: p for p in r.partitions.values()}
    assert segs["s0"].latency >= 36  # 6x6 pixels, one per cycle through the kernel


def test_conv_partitions_use_the_pixel_sequencer(conv_plan):
    from harness.cosim import rtlgen, sim
    from harness.cosim.ops import partition_ops

    core = rtlgen.generate("s1", partition_ops(conv_plan, "s1"), sim.CACHE)
    assert [s.split(":")[0] for s in core.segments] == ["conv", "flat"]


# --- mutants: broken shells the checker must catch (Icarus: builds in a second) --------------------------
@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    import keras

    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    keras.utils.set_random_seed(5)
    inp = keras.Input((6,), name="x")
    m = keras.Model(inp, keras.layers.Dense(5, name="fc")(inp), name="cosim_tiny")
    plan, models = split_model(m)
    folder = tmp_path_factory.mktemp("plan") / "tiny"
    write_plan(plan, models, folder)
    return Plan.load(folder)


def test_unbroken_shell_passes(tiny_plan):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(tiny_plan, "icarus", n_frames=6)
    assert r.ok, r.summary()


def test_mutant_tlast_one_beat_early_is_caught(tiny_plan):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(tiny_plan, "icarus", n_frames=6, mutant=1)
    assert not r.ok
    assert any("tlast on beat 1 of 3" in v for v in r.violations), r.violations[:5]
    assert any("no tlast on beat 2, the last of 3" in v for v in r.violations)


def test_mutant_ready_ignored_is_caught(tiny_plan):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(tiny_plan, "icarus", n_frames=6, mutant=2)
    assert not r.ok
    assert any("changed while stalled" in v for v in r.violations), r.violations[:5]


# --- vendor RTL --------------------------------------------------------------------------------------
def _vivado_style_wrapper(core, folder: Path) -> Path:
    """Our partition top behind Vivado-HLS-style port names (ap_clk, ap_rst_n, in_r_TDATA, out_r_TREADY...),
    to exercise the port mapping by prefix. Not vendor RTL: only its port naming."""
    from harness.cosim import rtlgen

    folder.mkdir(parents=True, exist_ok=True)
    files = rtlgen.shell_sources() + rtlgen.da4ml_static_sources(core) + core.sources
    for f in files:
        shutil.copy(f, folder / Path(f).name)
    dw, kw = core.in_packing["data_width"], core.in_packing["data_width"] // 8
    (folder / "sr_vendorlike_axi.v").write_text(f"""`timescale 1ns/1ps
module sr_vendorlike_axi (
    input wire ap_clk, input wire ap_rst_n,
    input wire [{dw - 1}:0] in_r_TDATA, input wire [{kw - 1}:0] in_r_TKEEP, input wire in_r_TVALID,
    output wire in_r_TREADY, input wire in_r_TLAST,
    output wire [{dw - 1}:0] out_r_TDATA, output wire [{kw - 1}:0] out_r_TKEEP, output wire out_r_TVALID,
    input wire out_r_TREADY, output wire out_r_TLAST
);
    {core.module} u (.aclk(ap_clk), .aresetn(ap_rst_n),
        .s_axis_tdata(in_r_TDATA), .s_axis_tkeep(in_r_TKEEP), .s_axis_tvalid(in_r_TVALID),
        .s_axis_tready(in_r_TREADY), .s_axis_tlast(in_r_TLAST),
        .m_axis_tdata(out_r_TDATA), .m_axis_tkeep(out_r_TKEEP), .m_axis_tvalid(out_r_TVALID),
        .m_axis_tready(out_r_TREADY), .m_axis_tlast(out_r_TLAST), .framing_error());
endmodule
""")
    return folder


def test_vendor_port_mapping_by_prefix(tiny_plan, tmp_path):
    from harness.cosim import rtlgen, sim
    from harness.cosim.ops import partition_ops
    from harness.cosim.vendor import cosimulate_vendor, map_ports

    core = rtlgen.generate("s0", partition_ops(tiny_plan, "s0"), sim.CACHE)
    folder = _vivado_style_wrapper(core, tmp_path / "vendorlike")
    pm = map_ports(sorted(folder.glob("*.v")))
    assert (pm.top, pm.slave_prefix, pm.master_prefix, pm.clock, pm.reset) == \
        ("sr_vendorlike_axi", "in_r", "out_r", "ap_clk", "ap_rst_n")
    assert pm.slave["tready"] == "in_r_TREADY" and pm.master["tlast"] == "out_r_TLAST"
    report = cosimulate_vendor(tiny_plan, "s0", folder, "icarus", n_frames=4)
    assert report["violations"] == []
    assert len(report["phases"]["stress"]["received"]["out"]) == 4


def test_vendor_rtl_of_a_partition(small_plan):
    from harness.cosim.vendor import cosimulate_vendor, vendor_dir

    found = [(p.name, vendor_dir(small_plan, p.name)) for p in small_plan.ordered_partitions()]
    found = [(n, d) for n, d in found if d is not None]
    if not found:
        pytest.skip("no Vivado HLS export for any partition: put a partition's exported Verilog in "
                    "<plan>/<partition>/vendor_rtl/ or $SPLITRACK_VENDOR_RTL/<partition>/ (needs Vivado, not here)")
    for name, folder in found:
        report = cosimulate_vendor(small_plan, name, folder)
        assert report["violations"] == [], report["violations"][:5]


# --- the command ---------------------------------------------------------------------------------------
def test_cli_json(small_plan, chain_results, capsys):
    from harness.cli.commands import main

    rc = main(["cosim", str(small_plan.root), "--sim", "icarus", "--json", "--frames", "8", "--no-write"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["outputs_match"]
    assert out["sim_cycles"] == chain_results["icarus"].sim_cycles


def test_cli_data_takes_the_users_file_through_the_one_loader(small_plan, chain_results, tmp_path, capsys,
                                                              monkeypatch):
    """`cosim --data FILE.npz`: the user's frames (cycled to --frames) are what is cosimulated; a file that
    does not fit the plan is one line, exit 2."""
    from harness.cli.commands import main
    from harness.cosim import cosim as cosim_mod

    x = np.random.default_rng(4).uniform(-2, 2, (2,) + tuple(small_plan.model["input_shape"])).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x)
    seen = []
    real = cosim_mod.cosimulate
    monkeypatch.setattr(cosim_mod, "cosimulate", lambda plan, *a, **k: seen.append(k["frames"]) or real(plan, *a, **k))
    rc = main(["cosim", str(small_plan.root), "--sim", "icarus", "--json", "--frames", "3", "--no-write",
               "--data", str(tmp_path / "mine.npz")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["outputs_match"] and out["frames"] == 3
    assert np.array_equal(seen[0], np.concatenate([x, x[:1]]))

    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    assert main(["cosim", str(small_plan.root), "--data", str(tmp_path / "wrong.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frames have 5 values" in err[0]


def test_cli_bad_plan_is_one_line_exit_2(tmp_path, capsys):
    from harness.cli.commands import main

    assert main(["cosim", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


def test_vendor_port_map_reads_vivado_hls_style_verilog(tmp_path):
    """Vivado HLS exports non-ANSI headers (names in the port list, directions in the body)."""
    from harness.cosim.vendor import map_ports

    (tmp_path / "myproject_axi.v").write_text("""
`timescale 1 ns / 1 ps
(* CORE_GENERATION_INFO="myproject_axi,hls_ip_2020_1" *)
module myproject_axi (
        ap_clk,
        ap_rst_n,
        in_r_TDATA,
        in_r_TVALID,
        in_r_TREADY,
        in_r_TKEEP,
        in_r_TLAST,
        out_r_TDATA,
        out_r_TVALID,
        out_r_TREADY,
        out_r_TKEEP,
        out_r_TLAST
);
input   ap_clk;
input   ap_rst_n;
input  [31:0] in_r_TDATA;
input   in_r_TVALID;
output   in_r_TREADY;
input  [3:0] in_r_TKEEP;
input  [0:0] in_r_TLAST;
output  [31:0] out_r_TDATA;
output   out_r_TVALID;
input   out_r_TREADY;
output  [3:0] out_r_TKEEP;
output  [0:0] out_r_TLAST;
// myproject u (...);
endmodule
module myproject (ap_clk, ap_rst, x_V_TDATA, y_V_TDATA);
input ap_clk; input ap_rst; input [15:0] x_V_TDATA; output [15:0] y_V_TDATA;
endmodule
""")
    pm = map_ports([tmp_path / "myproject_axi.v"])
    assert (pm.top, pm.slave_prefix, pm.master_prefix, pm.clock, pm.reset, pm.reset_active_low) == \
        ("myproject_axi", "in_r", "out_r", "ap_clk", "ap_rst_n", True)
    assert pm.master == {"tdata": "out_r_TDATA", "tkeep": "out_r_TKEEP", "tvalid": "out_r_TVALID",
                         "tready": "out_r_TREADY", "tlast": "out_r_TLAST"}


def test_dense_mac_sequencer_matches_emulation(conv_plan, monkeypatch):
    """Large Dense layers go through our MAC-lane sequencer (the reference CNN's fc1 is 512 x 130); here the
    threshold is lowered so that this small plan's Dense layers take that path too."""
    from harness.cosim import rtlgen, sim
    from harness.cosim.cosim import cosimulate
    from harness.cosim.ops import partition_ops

    monkeypatch.setattr(rtlgen, "DENSE_SEQ_MIN", 8)
    core = rtlgen.generate("s2_0", partition_ops(conv_plan, "s2_0"), sim.CACHE)
    assert [s.split(":")[0] for s in core.segments] == ["dense"]
    r = cosimulate(conv_plan, "icarus", n_frames=4)
    assert r.ok and r.outputs_match and not r.violations, r.summary()


def test_softmax_lookup_tables_on_icarus(tmp_path):
    """Softmax: da4ml lookup tables filled as hls4ml fills them (expf from the C library); Icarus needs a copy
    of da4ml's lookup_table.v without its parameter-dependent synthesis attribute."""
    import keras

    from harness.cosim.cosim import cosimulate
    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    keras.utils.set_random_seed(9)
    inp = keras.Input((8,), name="x")
    x = keras.layers.Dense(6, name="fc")(inp)
    x = keras.layers.Activation("softmax", name="softmax")(x)
    plan, models = split_model(keras.Model(inp, x, name="cosim_softmax"))
    write_plan(plan, models, tmp_path / "sm")
    r = cosimulate(Plan.load(tmp_path / "sm"), "icarus", n_frames=6)
    assert r.ok and r.outputs_match, r.summary()
