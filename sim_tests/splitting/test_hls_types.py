"""Average pooling accumulates in a type wide enough for its window (splitting/hls_types.py): hls4ml's own rule
for Pooling1D/2D (width + 2e, integer + e, e = ceil(log2(pool size))), applied to every average pooling,
global ones included (hls4ml leaves their accum_t at the default precision, and a GlobalAveragePooling2D of an
8x8 map of values near 1-4 wraps ap_fixed<16,6>: the untrained MLPerf Tiny ResNet-8 failed verify so)."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from harness.cli.commands import main
from splitting.hls import _convert_model
from splitting.hls_types import accumulators, widened
from splitting.split import split_model, write_plan

L = keras.layers


@pytest.mark.parametrize("prec,n,want", [("ap_fixed<16,6>", 64, "ap_fixed<28,12>"),
                                         ("ap_fixed<16,6>", 4, "ap_fixed<20,8>"),
                                         ("ap_ufixed<8,3,AP_RND,AP_SAT>", 9, "ap_ufixed<16,7>"),
                                         ("ap_fixed<10,2>", 1, "ap_fixed<10,2>")])
def test_widened_is_hls4ml_s_pooling_rule(prec, n, want):
    assert widened(prec, n) == want


def test_widened_leaves_other_types_to_hls4ml():
    assert widened("ap_int<8>", 4) is None and widened("float", 4) is None


def _gap_model():
    inp = keras.Input((8, 8, 2), name="x")
    y = L.Conv2D(3, 1, name="c")(inp)
    y = L.Activation("relu", name="r")(y)
    a = L.GlobalAveragePooling2D(name="gap")(y)
    b = L.AveragePooling2D(2, name="ap")(y)
    b = L.Flatten(name="fl")(b)
    y = L.Concatenate(name="cat")([a, b])
    return keras.Model(inp, L.Dense(2, name="out")(y), name="gap")


def test_every_average_pooling_gets_its_window_s_accumulator():
    cfg = {"Model": {"Precision": {"default": "ap_fixed<16,6>"}}, "LayerName": {"x": {"Precision": {"result": "ap_fixed<18,8>"}}}}
    out = accumulators(_gap_model(), cfg)
    assert out["LayerName"]["gap"]["Precision"]["accum"] == "ap_fixed<28,12>"  # 64 pixels: e = 6
    assert out["LayerName"]["ap"]["Precision"]["accum"] == "ap_fixed<20,8>"    # 2x2 window: e = 2
    assert out["LayerName"]["x"] == {"Precision": {"result": "ap_fixed<18,8>"}}  # untouched
    assert set(out["LayerName"]) == {"x", "gap", "ap"}
    named = {"Model": {"Precision": {"default": "ap_fixed<16,6>"}}, "LayerName": {"gap": {"Precision": {"accum": "ap_fixed<40,20>"}}}}
    assert accumulators(_gap_model(), named)["LayerName"]["gap"]["Precision"]["accum"] == "ap_fixed<40,20>"


def test_hls4ml_conversion_takes_the_accumulator(tmp_path):
    cfg = {"Model": {"Precision": {"default": "ap_fixed<16,6>"}, "ReuseFactor": 1, "Strategy": "Latency"}}
    hm = _convert_model(_gap_model(), cfg, {"io_type": "io_stream"}, tmp_path / "p", "sr_gap")
    accum = {l.name: l.get_attr("accum_t").precision for l in hm.get_layers() if l.name in ("gap", "ap")}
    assert (accum["gap"].width, accum["gap"].integer) == (28, 12)
    assert (accum["ap"].width, accum["ap"].integer) == (20, 8)


def test_verify_passes_a_global_average_that_wraps_the_default_precision(tmp_path, capsys):
    """Sums of 64 values near 2 per channel: beyond ap_fixed<16,6>'s 32 in hls4ml's default accum_t."""
    inp = keras.Input((8, 8, 2), name="x")
    y = L.Conv2D(4, 1, name="c")(inp)
    y = L.Activation("relu", name="r")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    model = keras.Model(inp, L.Dense(2, name="out")(y), name="gapwrap")
    rng = np.random.default_rng(3)
    model.get_layer("c").set_weights([rng.uniform(0.5, 1.0, (1, 1, 2, 4)).astype("float32"),
                                      np.full(4, 2.0, "float32")])
    model.get_layer("out").set_weights([rng.normal(0, 0.3, (4, 2)).astype("float32"), np.zeros(2, "float32")])
    plan, models = split_model(model, at=["r"])
    write_plan(plan, models, tmp_path / "p")
    code = main(["verify", str(tmp_path / "p"), "-n", "32", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["ok"], d.get("cause")
    assert d["whole_within"] is True and d["chain_within"] is True
