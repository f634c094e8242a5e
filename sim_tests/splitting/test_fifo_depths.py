"""The io_stream FIFO model (splitting.fifo_depths, analytic_model.streams) against hand counts: BRAM18 per
channel by the element's port width (7-series BRAM18: 18 Kbit, ports 1/2/4/9/18/36 bits), the chain FIFOs
hls4ml's FIFO depth optimisation leaves 2 deep (the published MLPerf Tiny ResNet's max_depth json: occupancy 1),
the FIFO on a residual block's skip branch as deep as its long branch delays, and the same depths read off
hls4ml's own converted graph (its Clone and ZeroPadding2D layers) and written into its project."""
import math

import pytest

from splitting import analytic_model as am
from splitting import fifo_depths as fd
from splitting.layerspec import HlsConfig, LayerSpec, model_specs


@pytest.mark.parametrize("depth, lanes, bits, want", [
    (16, 64, 16, 0),       # shallow: shift registers, no BRAM (the set: none at 16 deep)
    (36, 16, 16, 16),      # the set: one BRAM18 per channel at 36 deep (16-bit: 18-bit port, 1024 deep)
    (1024, 3, 16, 3),      # 1024 x 18 bits fills one BRAM18 exactly
    (1025, 3, 16, 6),      # one word more: two per channel
    (2048, 1, 8, 1),       # 8 bits: 9-bit port, 2048 deep
    (2049, 1, 8, 2),
    (4608, 2, 4, 2),       # 4 bits: 4-bit port, 4608 deep
    (512, 1, 36, 1),       # 36-bit port, 512 deep
    (513, 1, 36, 2),
    (100, 1, 40, 2),       # wider than a port: two side by side
])
def test_bram_per_channel_by_port_width(depth, lanes, bits, want):
    assert fd.bram18(depth, lanes, bits) == want


def _chain():
    return [
        LayerSpec("Conv2D", "c1", (16, 16, 3), (16, 16, 8), units=8, kernel=(3, 3), strides=(1, 1), padding="same", activation="relu"),
        LayerSpec("Conv2D", "c2", (16, 16, 8), (14, 14, 8), units=8, kernel=(3, 3), strides=(1, 1), padding="valid"),
        LayerSpec("Activation", "a2", (14, 14, 8), (14, 14, 8), activation="relu"),
    ]


def test_chain_fifos_are_shallow_when_optimized_and_pixels_deep_by_default():
    layers = _chain()
    opt = am.streams(layers, wrapper=True, fifo_depth="optimized")
    default = am.streams(layers, wrapper=True, fifo_depth="default")
    # wrapper in, c1's ZeroPadding2D, c1 -> its relu, relu -> c2, c2 -> a2, wrapper out: six streams
    assert len(opt) == len(default) == 6
    assert all(f.input_shape[0] == fd.SHALLOW for f in opt)
    assert [f.input_shape for f in default] == [(256, 3), (324, 3), (256, 8), (256, 8), (196, 8), (196, 8)]
    cfg = HlsConfig("ap_fixed<16,6>", 1, "Latency", fifo_depth="default")
    # 16-bit elements: one BRAM18 per channel for each stream 32 deep or more: 3 + 3 + 8 + 8 + 8 + 8
    assert am.segment(layers, cfg)[1]["bram"] == 38
    assert am.segment(layers, HlsConfig("ap_fixed<16,6>", 1, "Latency"))[1]["bram"] == 0


def _residual_block(width=32, ch=16):
    import keras
    from keras import layers

    inp = keras.Input((width, width, ch), name="x")
    y = layers.Conv2D(ch, 3, padding="same", name="c1")(inp)
    y = layers.Activation("relu", name="r1")(y)
    y = layers.Conv2D(ch, 3, padding="same", name="c2")(y)
    out = layers.Add(name="add")([inp, y])
    out = layers.Activation("relu", name="r2")(out)
    return keras.Model(inp, out)


def test_skip_fifo_holds_what_the_long_branch_delays():
    _, specs, _, _ = model_specs(_residual_block(32, 16))
    fifos = am.streams(specs, wrapper=True, fifo_depth="optimized")
    deep = [f.input_shape for f in fifos if f.input_shape[0] > fd.SHALLOW]
    # by hand: each 3x3 'same' conv on 32x32 pads to 34x34 and fills its line buffer with 2 rows + 3 pixels
    # (71 of 1156 padded pixels) before its first output; two of them lag 2 x 71/1156 of a frame, so the skip
    # FIFO into the Add holds ceil(1024 x 142/1156) = 126 pixels, + 2
    want = math.ceil(1024 * 2 * 71 / 1156) + 2
    assert want == 128
    assert deep == [(want, 16)]
    # at 16 bits: 128 deep x 16 channels, one BRAM18 each; everything else in shift registers
    assert am.segment(specs, HlsConfig("ap_fixed<16,6>", 1, "Latency"))[1]["bram"] == 16


def test_hls4ml_graph_gets_the_same_depths_and_its_project_carries_them(tmp_path):
    """Converted by hls4ml (no compile): its Clone feeds the skip stream into the Add; the depths read off
    hls4ml's graph match the analytic model's, and the written firmware carries them."""
    from splitting.hls import _convert_model, set_fifo_depths
    from splitting.split import HLS_DEFAULTS, hls_config

    model = _residual_block(16, 4)
    defaults = dict(HLS_DEFAULTS, fifo_depth="optimized")
    cfg = hls_config("ap_fixed<16,6>", 1, "Latency", "x", "ap_fixed<16,6>")
    hm = _convert_model(model, cfg, defaults, tmp_path / "p", "sr_fifo")
    depths = fd.hls4ml_depths(hm)
    _, specs, _, _ = model_specs(model)
    (skew,) = [f.input_shape[0] for f in am.streams(specs, True, "optimized") if f.input_shape[0] > fd.SHALLOW]
    merges = [l for l in hm.get_layers() if fd.isinstance_merge(l)]
    assert len(merges) == 1
    into_add = [depths[i] for i in merges[0].inputs]
    assert sorted(into_add) == [fd.SHALLOW, skew]
    assert sorted(set(depths.values())) == [fd.SHALLOW, skew]
    assert any(l.class_name == "Clone" for l in hm.get_layers())
    hm.write()
    src = (tmp_path / "p" / "firmware" / "sr_fifo.cpp").read_text()
    written = {hm.output_vars[k].name: d for k, d in depths.items() if k in hm.output_vars}  # C++ names
    assert written and sorted(written.values()).count(skew) == 1
    ports = {v.name for v in hm.get_input_variables() + hm.get_output_variables()}
    for name, d in written.items():
        if name not in ports:
            assert f"#pragma HLS STREAM variable={name} depth={d}" in src
    # the model's input and output are the top's ports: their depth is the VivadoAccelerator wrapper's streams'
    axi = (tmp_path / "p" / "firmware" / "sr_fifo_axi.cpp").read_text()
    for local in ("in_local", "out_local"):
        assert f"#pragma HLS STREAM variable={local} depth={fd.SHALLOW}" in axi
    # hls4ml's default depths stay when the plan assumed them
    hm2 = _convert_model(model, cfg, dict(HLS_DEFAULTS), tmp_path / "q", "sr_fifo")
    set_fifo_depths(hm2, dict(HLS_DEFAULTS))
    assert all(v.pragma[1] == math.prod(v.shape[:-1]) for v in hm2.output_vars.values() if isinstance(v.pragma, tuple))


def test_plan_built_with_optimized_depths_is_bit_exact_and_carries_them(tmp_path):
    """A plan whose hls4ml projects carry the optimized depths (what `plan` writes) verifies bit for bit as
    before (the C emulation does not depend on depths), and partition s0's firmware has them: its skip FIFO
    into the Add, by hand, ceil(16 px x (15 + 15) / 36) + 2 = 16 (two 3x3 'same' convs on 4x4, padded 6x6,
    each filling 2 x 6 + 3 = 15 of 36 pixels), every other stream 2."""
    import re

    import keras

    from splitting.hls import project_dir
    from splitting.plan import Plan
    from splitting.split import split_model, write_plan
    from splitting.verify import verify_plan

    keras.utils.set_random_seed(5)
    plan, models = split_model(_residual_block(4, 2), at=["add"])
    plan.hls_defaults["fifo_depth"] = "optimized"
    write_plan(plan, models, tmp_path / "plan")
    plan = Plan.load(tmp_path / "plan")
    v = verify_plan(plan, n=32, log=lambda m: None)
    assert v.float_ok and v.hls_bit_exact and v.hls_chain_max_abs_err == 0.0
    src = (project_dir(plan, "s0") / "project" / "firmware" / "sr_s0.cpp").read_text()
    depths = [int(d) for d in re.findall(r"#pragma HLS STREAM variable=\w+ depth=(\d+)", src)]
    assert sorted(set(depths)) == [fd.SHALLOW, math.ceil(16 * 30 / 36) + 2] == [2, 16]
    assert depths.count(16) == 1


def test_a_partition_that_starts_with_flatten_reads_the_maps_words():
    """hls4ml's Flatten is in place in io_stream (inplace_stream_flatten.py): a partition cut before it reads
    a stream of 16-channel pixels, so its input FIFOs are 16 channels, not one per element of the vector."""
    layers = [LayerSpec("Flatten", "fl", (12, 12, 16), (2304,)),
              LayerSpec("Dense", "fc", (2304,), (32,), units=32)]
    fifos = am.streams(layers, wrapper=True, fifo_depth="default")
    assert [f.input_shape for f in fifos] == [(144, 16), (1, 32)]
