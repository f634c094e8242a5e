"""Every failure says why (issue 27): verify checks every layer of hls4ml's emulation, of the whole model and
of each partition, against Keras computing that layer on hls4ml's own input, within the bound the layer's
fixed-point types explain (splitting/quant_bound.py). It names the first layer beyond it, and says whether
hls4ml itself is the cause (its whole model departs too); "(quantisation)" only where every layer is within.

The departing kind found here: hls4ml 1.3 gives a PReLU whose alphas are shared over axes (one alpha per
filter after a Conv2D, `shared_axes=[1, 2]`) one alpha per element and reads past the filter's alphas.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from harness.cli.commands import main
from splitting.plan import Plan
from splitting.split import split_model, write_plan

L = keras.layers


def _weights(m, seed):
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([(rng.uniform(0.05, 0.4, w.shape) if type(layer).__name__ == "PReLU"
                                else rng.normal(0, 0.4, w.shape)).astype(w.dtype) for w in ws])
    return m


def _verify(capsys, folder, *extra):
    code = main(["verify", str(folder), "-n", "64", "--json", *map(str, extra)])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err[-3000:]
    return code, json.loads(cap.out)


@pytest.mark.parametrize("shared,split", [([1, 2], {"neurons": {"c1": 2}}), ([1], {})])
def test_verify_names_the_prelu_hls4ml_gets_wrong_and_says_the_whole_model_departs(shared, split, tmp_path, capsys):
    model = _weights(keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(4, 3, name="c1"),
                                       L.PReLU(shared_axes=shared, name="act"), L.Flatten(name="fl"),
                                       L.Dense(3, name="out")], name="prelu_shared"), seed=1)
    plan, models = split_model(model, **split)
    write_plan(plan, models, tmp_path / "p")
    code, d = _verify(capsys, tmp_path / "p")
    assert code == 1 and not d["ok"] and d["float_ok"]  # the split itself is exact in float
    whole = d["layer_checks"][0]
    assert whole["scope"] == "the whole model" and whole["within"] is False
    assert (whole["departure"]["layer"], whole["departure"]["kind"]) == ("act", "PReLU")
    assert whole["departure"]["error"] > 100 * whole["departure"]["bound"]  # far beyond quantisation
    assert d["whole_within"] is False and d["chain_within"] is False
    first = next(c for c in d["layer_checks"][1:] if c["departure"])
    assert first["scope"] == f"partition {plan.ordered_partitions()[0].name}"
    assert first["departure"]["kind"] == "PReLU" and first["departure"]["layer"].startswith("act")
    assert d["cause"].startswith("hls4ml itself") and "(first at layer act, PReLU)" in d["cause"]
    # the text says the same, and calls nothing "quantisation"
    code = main(["verify", str(tmp_path / "p"), "-n", "64"])
    text = capsys.readouterr().out
    assert code == 1 and "(quantisation)" not in text
    assert "departure: the whole model: first at layer act (PReLU" in text and "cause: hls4ml itself" in text


@pytest.fixture(scope="module")
def mixed_plan(tmp_path_factory):
    """A model with one layer of most kinds verify has a rule for, cut in two."""
    model = _weights(keras.Sequential([
        keras.Input((6, 6, 2)), L.Conv2D(4, 3, activation="relu", name="c1"), L.MaxPooling2D(2, name="mp"),
        L.Flatten(name="fl"), L.Dense(8, activation="tanh", name="d1"), L.Dense(6, activation="sigmoid", name="d2"),
        L.Dense(6, name="d3"), L.LeakyReLU(negative_slope=0.2, name="lk"), L.Dense(4, name="d4"),
        L.Activation("softmax", name="sm")], name="mixed"), seed=3)
    folder = tmp_path_factory.mktemp("mixed") / "p"
    plan, models = split_model(model, at=["fl"])
    write_plan(plan, models, folder)
    return Plan.load(folder)


def test_a_departure_within_quantisation_keeps_the_label(mixed_plan, capsys):
    code, d = _verify(capsys, mixed_plan.root, "--data", "random")
    assert code == 0 and d["ok"] and d["hls_bit_exact"], d
    assert d["hls_vs_keras_max_abs_err"] > 0  # quantised, not equal
    assert d["whole_within"] is True and d["chain_within"] is True
    for c in d["layer_checks"]:
        assert c["within"] is True and not c["unchecked"] and c["overflow"] is None, c
    assert d["layer_checks"][0]["layers_checked"] >= 10  # every hls4ml layer with an output, activations too
    code = main(["verify", str(mixed_plan.root), "-n", "64"])
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith(("hls chain vs Keras", "whole-model hls vs"))]
    assert len(rows) == 2 and all(r.rstrip().endswith("ok (quantisation)") for r in rows), rows


def test_the_layer_check_fails_beyond_the_bound_and_not_within_it(mixed_plan):
    """The same traced run passes with hls4ml's own (quantised, not equal) outputs, and departs at a layer
    whose output is moved by a few of its bounds: there first, although later layers read the moved value."""
    from splitting.diagnose import _check, traced_run, whole_model
    from splitting.split import load_models

    models = load_models(mixed_plan)
    x = np.random.default_rng(0).uniform(0, 1, (16, 6, 6, 2))
    run = traced_run(mixed_plan, None, x)
    model = whole_model(mixed_plan, models)
    base = _check(model, run)
    assert base.within is True and max(c.error for c in base.checks) > 0
    d2 = next(c for c in base.checks if c.hls_layer == "d2")  # the Dense before its sigmoid
    moved = np.where(np.arange(run.trace["d2"].shape[1]) == 1, 8 * d2.bound + 0.01, 0.0)
    checked = _check(model, type(run)(run.batch, run.out, run.layers, dict(run.trace, d2=run.trace["d2"] + moved)))
    assert checked.within is False
    assert (checked.departure.layer, checked.departure.hls_layer) == ("d2", "d2")
