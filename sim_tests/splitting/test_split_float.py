"""Float composition: every kind of split, chained partition by partition, equals the original model."""
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from splitting.chain import keras_runner, run_chain
from splitting.graph import LayerGraph, SplitError
from splitting.plan import Plan
from splitting.split import split_model, write_plan, load_models

TOL = 1e-5


def _rel_err(model, plan, models, x):
    ref = model(x, training=False).numpy()
    run = lambda name, inp: models[name](inp, training=False).numpy()  # direct calls: fast for small batches
    out = run_chain(plan, x, run)
    return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _mlp(widths, acts, seed):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((widths[0],))]
    for i, (w, a) in enumerate(zip(widths[1:], acts)):
        layers.append(keras.layers.Dense(w, activation=a, name=f"d{i}"))
    return keras.Sequential(layers)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mlp_any_cuts_and_splits(data):
    depth = data.draw(st.integers(2, 4), "depth")
    widths = data.draw(st.lists(st.integers(4, 24), min_size=depth + 1, max_size=depth + 1), "widths")
    acts = data.draw(st.lists(st.sampled_from(["relu", "tanh", "linear", "sigmoid"]), min_size=depth, max_size=depth))
    if data.draw(st.booleans(), "softmax_last"):
        acts[-1] = "softmax"
    model = _mlp(widths, acts, data.draw(st.integers(0, 10_000), "seed"))
    names = [f"d{i}" for i in range(depth)]
    split_layers = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=2), "split")
    neurons, inputs = {}, {}
    for n in split_layers:
        i = names.index(n)
        if data.draw(st.booleans(), f"kind_{n}"):
            neurons[n] = data.draw(st.integers(2, min(4, widths[i + 1])), f"k_{n}")
        else:
            inputs[n] = data.draw(st.integers(2, min(4, widths[i])), f"k_{n}")
    free = [n for n in names[:-1] if n not in split_layers]
    at = data.draw(st.lists(st.sampled_from(free), unique=True, max_size=len(free)), "at") if free else []
    plan, models = split_model(model, at=at, neurons=neurons, inputs=inputs)
    x = np.random.default_rng(1).normal(size=(16, widths[0])).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL
    for n, k in {**neurons, **inputs}.items():  # the split really happened: k parallel partitions in one stage
        assert any(len(s.partitions) == k and s.kind in ("neuron", "input") for s in plan.stages)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f1=st.integers(2, 8), f2=st.integers(2, 8), k=st.integers(2, 4), how=st.sampled_from(["neuron", "input"]),
       pad=st.sampled_from(["same", "valid"]), seed=st.integers(0, 999))
def test_random_cnn_conv_splits(f1, f2, k, how, pad, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((7, 7, 2)),
        keras.layers.Conv2D(f1, 3, padding=pad, activation="relu", name="c1"),
        keras.layers.Conv2D(f2, 2, padding=pad, activation="tanh", name="c2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(5, activation="softmax", name="out"),
    ])
    k = min(k, f2 if how == "neuron" else f1)
    spec = {"c2": k}
    plan, models = split_model(model, neurons=spec if how == "neuron" else {}, inputs=spec if how == "input" else {})
    x = np.random.default_rng(seed).uniform(size=(8, 7, 7, 2)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


@pytest.mark.parametrize("name,kw", [
    ("fc", dict(at=["fc1"])),
    ("fc", dict(neurons={"fc1": 4})),
    ("fc", dict(inputs={"fc2": 3}, neurons={"fc3": 2})),
    ("cnn", dict(at=["pool"])),
    ("cnn", dict(neurons={"conv2": 2}, at=["pool"])),
    ("cnn", dict(inputs={"fc1": 2})),
    ("cnn", dict(inputs={"conv2": 2}, neurons={"fc1": 3})),
])
def test_reference_models_split_exactly(name, kw, tmp_path):
    from splitting.reference_models import digits_data, model_inputs, reference_model

    model = reference_model(name)
    plan, models = split_model(model, **kw)
    write_plan(plan, models, tmp_path)
    plan = Plan.load(tmp_path)  # the saved folder is what later steps read
    models = load_models(plan)
    x = model_inputs(name, digits_data()[2][:64])
    assert _rel_err(model, plan, models, x) <= TOL


def test_softmax_moves_after_neuron_join():
    model = _mlp([6, 8, 4], ["relu", "softmax"], 3)
    plan, models = split_model(model, neurons={"d1": 2})
    parts = [p for p in plan.ordered_partitions() if p.kind == "neuron"]
    assert all("softmax" not in str(models[p.name].get_config()) for p in parts)
    last = plan.ordered_partitions()[-1]
    assert last.kind == "layers" and last.layers == ["(d1_softmax)"]  # d1's own softmax, after the join
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


def test_contracts_describe_the_links():
    model = _mlp([10, 9, 7, 3], ["relu", "relu", "linear"], 5)
    plan, _ = split_model(model, neurons={"d0": 3}, inputs={"d1": 2})
    into_inputs = [c for c in plan.links if c.dst.startswith("s1_")]
    # neuron parts (3 x 3 units) feed input parts taking 5 and 4 inputs: selects cut across part borders
    got = sorted((c.src, c.dst, c.select.start if c.select else 0, c.shape[-1]) for c in into_inputs)
    assert got == [("s0_0", "s1_0", 0, 3), ("s0_1", "s1_0", 0, 2), ("s0_1", "s1_1", 2, 1), ("s0_2", "s1_1", 0, 3)]
    join_in = plan.inputs_of("s2")
    assert [c.combine for c in join_in] == ["sum", "sum"] and plan.partition("s2").kind == "join"
    assert plan.partition("s2").input_shape == [14]
    assert plan.hash == Plan.from_dict(plan.to_dict()).hash


def _branchy():
    inp = keras.Input((6,))
    a = keras.layers.Dense(5, activation="relu", name="a")(inp)
    b = keras.layers.Dense(5, name="b")(a)
    b = keras.layers.Activation("relu", name="b_act")(b)
    c = keras.layers.Add(name="add")([a, b])
    d = keras.layers.Dense(3, name="d")(c)
    return keras.Model(inp, d)


def test_cut_inside_branch_gives_each_crossing_tensor_its_link():
    model = _branchy()
    g = LayerGraph.of(model)
    assert g.clean_cuts() == ["a", "add"]
    assert g.crossing("b_act") == ["a", "b_act"]
    plan, models = split_model(model, at=["b_act"])
    into = plan.inputs_of("s1")
    assert [(c.src, c.dst_input) for c in into] == [("s0", 0), ("s0", 1)]  # b_act first: add reads [a, b_act]
    assert plan.partition("s0").output_shapes == [[5], [5]] and plan.partition("s1").input_shapes == [[5], [5]]
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    out = run_chain(plan, x, keras_runner(models))
    assert np.max(np.abs(out - model.predict(x, verbose=0))) <= 1e-5 * np.max(np.abs(out))


def test_split_of_a_layer_the_model_branches_around_names_a_clean_cut():
    with pytest.raises(SplitError, match=r"cannot split 'b'.*branches around it.*2 tensors cross after 'b_act'"):
        split_model(_branchy(), neurons={"b": 2})


def test_cut_between_layer_and_activation_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="b"),
                              keras.layers.Activation("relu", name="b_act"), keras.layers.Dense(2, name="c")])
    with pytest.raises(SplitError, match=r"separate the layer from its activation 'b_act'; cut after 'b_act'"):
        split_model(model, at=["b"])


def test_functional_model_with_branch_inside_a_partition():
    model = _branchy()
    plan, models = split_model(model, at=["a", "add"])
    assert [p.layers for p in plan.ordered_partitions()] == [["a"], ["b", "b_act", "add"], ["d"]]
    x = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


@pytest.mark.parametrize("kw,msg", [
    (dict(at=["nope"]), r"no layer named 'nope'.*d0, d1"),
    (dict(neurons={"d0": 9}), r"it has 8 units; use k <= 8"),
    (dict(inputs={"d1": 9}), r"it has 8 inputs; use k <= 8"),
    (dict(neurons={"d0": 1}), r"k must be at least 2"),
    (dict(at=["d1"]), r"last layer"),
])
def test_bad_split_requests(kw, msg):
    with pytest.raises(SplitError, match=msg):
        split_model(_mlp([5, 8, 4], ["relu", "linear"], 0), **kw)


def test_unsupported_layer_type():
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c"),
                              keras.layers.MaxPooling2D(name="pool"), keras.layers.Flatten(name="f"),
                              keras.layers.Dense(2, name="d")])
    with pytest.raises(SplitError, match=r"'pool' is MaxPooling2D: split one of those"):
        split_model(model, neurons={"pool": 2})
