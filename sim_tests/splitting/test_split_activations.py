"""Activation layers keep every setting and weight wherever a split rebuilds them (issue 10, fault kind 1).

Property: a randomly split Dense or Conv2D followed by random Keras activation layers with random settings
either splits with the float chain within 1e-5 of the original on wide-range inputs, or is refused with a
one-line UserError. No expectation here depends on one particular slope, axis or cap.
"""
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from splitting.chain import run_chain
from splitting.errors import UserError
from splitting.rebuild import ELEMENTWISE
from splitting.split import split_model

TOL = 1e-5
WIDE = 8.0  # inputs in [-8, 8]: past every cap, threshold and bend the strategies below can draw


def _rel_err(model, plan, models, x):
    ref = model(x, training=False).numpy()
    out = run_chain(plan, x, lambda name, inp: models[name](inp, training=False).numpy())
    return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-12))


@st.composite
def activation_layer(draw, rank):
    """Any Keras 3 activation layer with random settings, for a tensor of `rank` axes (batch included)."""
    kind = draw(st.sampled_from(["ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Activation"]))
    f = lambda lo, hi: draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    L = keras.layers
    if kind == "ReLU":
        kw = dict(max_value=f(0.5, 6.0) if draw(st.booleans()) else None,
                  negative_slope=f(0.0, 0.5) if draw(st.booleans()) else 0.0,
                  threshold=f(0.0, 1.0) if draw(st.booleans()) else 0.0)
        return lambda name: L.ReLU(**kw, name=name)
    if kind == "LeakyReLU":
        slope = f(0.01, 0.9)
        return lambda name: L.LeakyReLU(negative_slope=slope, name=name)
    if kind == "PReLU":
        axes = draw(st.lists(st.integers(1, rank - 1), unique=True, max_size=rank - 1))
        return lambda name: L.PReLU(shared_axes=axes or None, name=name)
    if kind == "ELU":
        alpha = f(0.1, 2.0)
        return lambda name: L.ELU(alpha=alpha, name=name)
    if kind == "Softmax":
        axis = draw(st.sampled_from(list(range(1, rank)) + [-1]))
        return lambda name: L.Softmax(axis=axis, name=name)
    fn = draw(st.sampled_from(list(ELEMENTWISE) + ["softmax", "log_softmax"]))
    return lambda name: L.Activation(fn, name=name)


def _random_weights(model, rng):
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.uniform(0.05, 0.9, w.shape).astype(w.dtype) if type(layer).__name__ == "PReLU"
                               else rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in ws])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_split_layer_then_random_activation_layers(data):
    conv = data.draw(st.booleans(), "conv")
    rank = 4 if conv else 2
    n_in = data.draw(st.integers(2, 6), "n_in")
    n_out = data.draw(st.integers(2, 6), "n_out")
    own = data.draw(st.sampled_from(["linear", "relu", "tanh", "softmax", "leaky_relu", "elu"]), "own activation")
    acts = data.draw(st.lists(activation_layer(rank), min_size=1, max_size=3), "activation layers")
    how = data.draw(st.sampled_from(["neurons", "inputs"]), "how")
    k = data.draw(st.integers(2, min(3, n_out if how == "neurons" else n_in)), "k")
    keras.utils.set_random_seed(data.draw(st.integers(0, 999), "seed"))
    inp = keras.Input((5, 5, n_in) if conv else (n_in,))
    x = (keras.layers.Conv2D(n_out, 3, padding="same", activation=own, name="L") if conv else
         keras.layers.Dense(n_out, activation=own, name="L"))(inp)
    for i, make in enumerate(acts):
        x = make(f"act{i}")(x)
    x = keras.layers.Flatten(name="fl")(x) if conv else x
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(data.draw(st.integers(0, 999), "weights"))
    _random_weights(model, rng)
    try:
        plan, models = split_model(model, **{how: {"L": k}})
    except UserError as e:  # a refusal is allowed, in one line that names the layer
        assert "\n" not in str(e) and ("'L'" in str(e) or "act" in str(e)), str(e)
        return
    xs = rng.uniform(-WIDE, WIDE, (32,) + tuple(model.input_shape[1:])).astype(np.float32)
    assert _rel_err(model, plan, models, xs) <= TOL
    assert any(len(s.partitions) == k for s in plan.stages)


def _split(case, **kw):
    return split_model(keras.models.load_model(case, compile=False), **kw)


def test_leaky_relu_keeps_its_slope_in_every_part(field_cases):
    """Field case leaky_relu: the parts must use the layer's own slope, not Keras's default."""
    model = keras.models.load_model(field_cases / "leaky_relu.keras", compile=False)
    slope = model.get_layer("act").get_config()["negative_slope"]
    plan, models = split_model(model, neurons={"d1": 2})
    for name in ("s0_0", "s0_1"):
        slopes = [l.get_config()["negative_slope"] for l in models[name].layers if type(l).__name__ == "LeakyReLU"]
        assert slopes == [slope]
    x = np.load(field_cases / "leaky_relu.npz")["x"]
    assert _rel_err(model, plan, models, x) <= TOL


def test_prelu_alphas_go_with_their_units(field_cases):
    model = keras.models.load_model(field_cases / "prelu.keras", compile=False)
    alpha = model.get_layer("act").get_weights()[0]
    plan, models = split_model(model, neurons={"d1": 2})
    got = [next(l for l in models[n].layers if type(l).__name__ == "PReLU").get_weights()[0] for n in ("s0_0", "s0_1")]
    lo, hi = plan.partitions["s0_0"].split["range"]
    assert np.array_equal(got[0], alpha[..., lo:hi]) and np.array_equal(got[1], alpha[..., hi:])
    x = np.load(field_cases / "prelu.npz")["x"]
    assert _rel_err(model, plan, models, x) <= TOL


@pytest.mark.parametrize("how", ["neurons", "inputs"])
def test_relu_keeps_cap_threshold_and_slope(how):
    """ReLU's max_value, threshold and negative_slope survive a neuron split and an input-split join."""
    rng = np.random.default_rng(3)
    cfg = dict(max_value=float(rng.uniform(1, 3)), threshold=float(rng.uniform(0.1, 0.5)),
               negative_slope=float(rng.uniform(0.05, 0.5)))
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d"), keras.layers.ReLU(**cfg, name="r"),
                              keras.layers.Dense(2, name="o")])
    plan, models = split_model(model, **{how: {"d": 2}})
    rebuilt = [l for m in models.values() for l in m.layers if type(l).__name__ == "ReLU"]
    assert rebuilt and all(l.get_config()["max_value"] == cfg["max_value"] and
                           l.get_config()["threshold"] == cfg["threshold"] and
                           l.get_config()["negative_slope"] == cfg["negative_slope"] for l in rebuilt)
    x = rng.uniform(-WIDE, WIDE, (64, 6)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


def test_softmax_over_the_split_axis_runs_after_the_join_with_its_axis():
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(6, name="d"),
                              keras.layers.Softmax(axis=-1, name="sm"), keras.layers.Flatten(name="f")])
    plan, models = split_model(model, neurons={"d": 2})
    moved = [p for p in plan.ordered_partitions() if "(sm)" in p.layers]
    assert len(moved) == 1 and moved[0].kind == "layers"
    x = np.random.default_rng(0).uniform(-WIDE, WIDE, (16, 4, 3)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


@pytest.mark.parametrize("how", ["neurons", "inputs"])
def test_a_layer_object_as_activation_argument_keeps_its_settings(how):
    """Dense(activation=LeakyReLU(s)): Keras keeps s in the config; the parts / the join keep it too."""
    slope = float(np.random.default_rng(7).uniform(0.01, 0.9))
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation=keras.layers.LeakyReLU(negative_slope=slope),
                                                                     name="d"), keras.layers.Dense(2, name="o")])
    plan, models = split_model(model, **{how: {"d": 2}})
    x = np.random.default_rng(1).uniform(-WIDE, WIDE, (64, 6)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL
