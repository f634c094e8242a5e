"""The rule4ml adapter against rule4ml itself.

rule4ml's `MultiModelWrapper.predict` on a built Keras model, one model and one configuration per call, is
the reference: our batched, cached estimates must be the same numbers, for the seed notebook's 784-16-32-10
model, and the plan's partition figures must be rule4ml's predictions for the partition sub-models split_model
writes.
"""
import pytest

from splitting import catalog
from splitting.layerspec import HlsConfig, load_layers
from splitting.reuse import closest_reuse_factor, valid_reuse_factors
from splitting.rule4ml_adapter import RULE4ML_LAYERS, Rule4ml
from splitting.search import SearchOptions, plan_search

PYNQ = catalog.board("pynq-z2")
FIGS = [("lut", "LUT"), ("ff", "FF"), ("dsp", "DSP"), ("bram", "BRAM"), ("cycles", "CYCLES"), ("interval", "INTERVAL")]


@pytest.fixture(scope="module")
def seed_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(16, activation="relu", name="dense"),
        keras.layers.Dense(32, activation="relu", name="dense_1"),
        keras.layers.Dense(10, activation="softmax", name="dense_2"),
    ], name="seed_784_16_32_10")


@pytest.fixture(scope="module")
def rule4ml_wrapper():
    import torch  # noqa: F401  (torch and torch_geometric before TensorFlow, as the adapter does)
    import torch_geometric  # noqa: F401
    from rule4ml.models.wrappers import MultiModelWrapper

    w = MultiModelWrapper()
    w.load_default_models()
    return w


def rule4ml_predict(w, model, cfg: HlsConfig, board="pynq-z2"):
    """rule4ml's own answer for one model and one configuration."""
    hc = {"board": board, "model": {"strategy": cfg.strategy, "precision": cfg.precision, "reuse_factor": cfg.reuse_factor}}
    df = w.predict(model, hls_configs=[hc], hls4ml_versions="1.1.0", vivado_versions="2019.1", round_digits=9)
    assert len(df) == 1
    return {ours: float(df.iloc[0][theirs]) for ours, theirs in FIGS}


# both precisions, both strategies, small and large reuse (each reference call costs rule4ml seconds)
def as_sequential(model):
    """The same layers as a built Sequential model: rule4ml's parser cannot read Keras 3 functional models
    (no `_build_shapes_dict`), which is what split_model writes."""
    import keras

    layers = [type(l).from_config(l.get_config()) for l in model.layers if type(l).__name__ != "InputLayer"]
    seq = keras.Sequential([keras.Input(tuple(model.inputs[0].shape[1:]))] + layers, name=model.name)
    for new, old in zip(layers, [l for l in model.layers if type(l).__name__ != "InputLayer"]):
        new.set_weights(old.get_weights())
    return seq


# balance=False: the reuse factor per layer as hls4ml (and rule4ml's own `predict`) applies a model-level value
CONFIGS = [HlsConfig("ap_fixed<8,3>", 1, "Latency", balance=False), HlsConfig("ap_fixed<16,6>", 8, "Resource", balance=False),
           HlsConfig("ap_fixed<16,6>", 64, "Latency", balance=False), HlsConfig("ap_fixed<8,3>", 64, "Resource", balance=False)]


def test_estimates_equal_rule4ml_predictions_for_the_seed_model(seed_model, rule4ml_wrapper, tmp_path):
    _, specs = load_layers(seed_model)
    est = Rule4ml(PYNQ, cache=tmp_path)
    ours = est.estimate_many([(tuple(specs), c) for c in CONFIGS])  # one batched call
    for cfg, e in zip(CONFIGS, ours):
        ref = rule4ml_predict(rule4ml_wrapper, seed_model, cfg)
        for f, _ in FIGS:
            assert getattr(e, f) == pytest.approx(ref[f], rel=1e-4, abs=1e-3), (cfg, f)
        assert e.estimator == "rule4ml"
    # the batch did not change anything: the same figures alone, and from the cache in a fresh estimator
    alone = Rule4ml(PYNQ, cache=tmp_path / "other").estimate(specs, CONFIGS[3])
    assert alone.lut == pytest.approx(ours[3].lut, rel=1e-5)
    again = Rule4ml(PYNQ, cache=tmp_path)
    cached = again.estimate_many([(tuple(specs), c) for c in CONFIGS])
    assert again.stats["computed"] == 0 and again.stats["cached"] == len(CONFIGS)
    assert [c.lut for c in cached] == [o.lut for o in ours]


def test_plan_partitions_carry_rule4ml_predictions_of_their_submodels(seed_model, rule4ml_wrapper, tmp_path):
    """A plan of the seed model that must cut (reuse 1, cap 35 %: the whole model is predicted at 41 % LUT):
    each partition's figures are what rule4ml predicts for the Keras sub-model split_model writes for it, with
    the configuration the planner chose."""
    from harness.cli.plan import apply
    from splitting.split import split_model

    _, specs = load_layers(seed_model)
    # the point must fit (not the MC-dropout upper bound), and rule4ml's implausibly low DSP figures at reuse 1
    # are what this test compares, so the planner may use them here
    opts = SearchOptions(board=PYNQ, cap=0.35, monotone=False, reuse_factors=(1,), strategies=("Latency",), fit="point",
                         plausible_only=False)
    est = Rule4ml(PYNQ, cache=tmp_path)
    best = plan_search(specs, est, opts).best
    assert best.boards >= 2
    plan, models = split_model(seed_model, at=best.cut_after, neurons=best.neurons, inputs=best.inputs)
    apply(plan, best, opts, est.version)
    checked = 0
    for part in plan.ordered_partitions():
        if part.kind not in ("layers", "neuron", "input"):
            continue  # a join is estimated as the sum it computes, not as the identity-kernel Dense it is built as
        m = as_sequential(models[part.name])
        h = part.hls["Model"]
        ref = rule4ml_predict(rule4ml_wrapper, m, HlsConfig(h["Precision"]["default"], h["ReuseFactor"], h["Strategy"]))
        e = part.estimate
        for f in ("lut", "ff", "dsp", "bram"):
            assert e["utilization"][f] == pytest.approx(ref[f] / PYNQ.capacity(f), rel=1e-3, abs=1e-4), (part.name, f)
        assert e["cycles"] == pytest.approx(ref["cycles"], rel=1e-3, abs=0.1)
        checked += 1
    assert checked >= 2


def test_monotone_rule_raises_a_run_to_what_its_layers_need(seed_model, tmp_path):
    _, specs = load_layers(seed_model)
    est = Rule4ml(PYNQ, cache=tmp_path)
    cfg = HlsConfig("ap_fixed<16,6>", 1, "Latency")
    runs = est.estimate_many([(tuple(specs[i:j]), cfg) for i in range(3) for j in range(i + 1, 4)])
    whole = runs[2]  # specs[0:3]
    # rule4ml predicts more of something for a part of the model than for all of it (a fact of its GNN)
    assert any(getattr(r, f) > getattr(whole, f) for r in runs for f in ("lut", "ff", "dsp", "bram"))
    best = plan_search(specs, est, SearchOptions(board=PYNQ, reuse_factors=(1,), strategies=("Latency",), fit="point",
                                                 plausible_only=False)).best
    (part,) = best.partitions
    for f in ("lut", "ff", "dsp", "bram", "cycles"):
        assert getattr(part.estimate, f) == pytest.approx(max(getattr(r, f) for r in runs)), f
    assert "raised to the estimate of" in part.estimate.note


def test_layer_dicts_match_rule4mls_keras_parser():
    """What we hand rule4ml equals what its own parser extracts from the built model (layers it can read).
    BatchNormalization never reaches rule4ml: the planner folds it into the layer before it (or refuses it)."""
    import keras
    from keras import layers
    from rule4ml.parsers.network_parser import config_from_keras_model

    m = keras.Sequential([
        keras.Input((8, 8, 2)),
        layers.Conv2D(4, 3, strides=1, padding="same", activation="relu", name="c1"),
        layers.Conv2D(6, (3, 2), strides=(2, 1), name="c2"),
        layers.Activation("tanh", name="act"),
        layers.Flatten(name="flat"),
        layers.Dense(12, activation="sigmoid", name="d1"),
        layers.Dense(5, use_bias=False, name="d2"),
    ])
    _, specs = load_layers(m)
    for cfg in (HlsConfig("ap_fixed<16,6>", 7, "Resource", balance=False), HlsConfig("ap_fixed<8,3>", 1, "Latency", balance=False)):
        hc = {"board": "pynq-z2", "model": {"strategy": cfg.strategy, "precision": cfg.precision, "reuse_factor": cfg.reuse_factor}}
        theirs = config_from_keras_model(m, hc)
        ours = Rule4ml.rule4ml_layers(specs, cfg)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            b = dict(b)
            b["dtype"] = "float32"  # theirs carries Keras's dtype policy object for nested activations
            a = {k: v for k, v in a.items() if k != "name"}
            b.pop("name", None)
            assert a == b
    assert {type(l).__name__ for l in m.layers} <= RULE4ML_LAYERS


@pytest.mark.parametrize("layer,name", [("MaxPooling2D", "max_pooling2d"), ("Dropout", "dropout")])
def test_pooling_and_dropout_are_still_unreadable_by_rule4ml_under_keras3(layer, name):
    """Why pooling is estimated analytically and dropout left out; if rule4ml learns to read them, use it."""
    import keras
    from keras import layers
    from rule4ml.parsers.network_parser import config_from_keras_model

    extra = layers.MaxPooling2D(2) if layer == "MaxPooling2D" else layers.Dropout(0.1)
    m = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3), extra, layers.Flatten(), layers.Dense(3)])
    with pytest.raises(AttributeError, match=name):
        config_from_keras_model(m, {"board": "pynq-z2", "model": {"strategy": "Latency", "precision": "ap_fixed<16,6>", "reuse_factor": 1}})


def test_dropout_costs_nothing(tmp_path):
    import keras
    from keras import layers

    def build(dropout):
        extra = [layers.Dropout(0.3, name="drop")] if dropout else []
        return keras.Sequential([keras.Input((20,)), layers.Dense(8, activation="relu", name="a")] + extra + [layers.Dense(4, name="b")])

    est = Rule4ml(PYNQ, cache=tmp_path)
    a, b = (est.estimate(load_layers(build(d))[1], HlsConfig()) for d in (True, False))
    assert (a.lut, a.ff, a.dsp, a.cycles, a.estimator) == (b.lut, b.ff, b.dsp, b.cycles, "rule4ml")


def test_cnn_with_pooling_is_marked_rule4ml_plus_analytic(tmp_path):
    import keras
    from keras import layers

    m = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu", name="c"),
                          layers.MaxPooling2D(2, name="pool"), layers.Flatten(name="f"), layers.Dense(3, name="d")])
    _, specs = load_layers(m)
    est = Rule4ml(PYNQ, cache=tmp_path)
    cfg = HlsConfig()
    with_pool, conv_only = est.estimate_many([(tuple(specs), cfg), (tuple(specs[:1]), cfg)])
    assert with_pool.estimator == "rule4ml+analytic"
    assert conv_only.estimator == "rule4ml"


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 3), (16, 10), (12, 18), (30, 7), (64, 24)])
def test_reuse_factor_rule_equals_rule4mls(n_in, n_out):
    from rule4ml.parsers.utils import get_closest_reuse_factor, _validate_reuse_factor

    assert list(valid_reuse_factors(n_in, n_out)) == [r for r in range(1, n_in * n_out + 1) if _validate_reuse_factor(n_in, n_out, r)]
    for rf in (1, 2, 3, 5, 8, 13, 64, 200):
        assert closest_reuse_factor(n_in, n_out, rf) == get_closest_reuse_factor(n_in, n_out, rf)


def test_load_layers_reads_the_keras_file_like_the_model(seed_model, tmp_path):
    seed_model.save(tmp_path / "m.keras")
    assert load_layers(tmp_path / "m.keras") == load_layers(seed_model)
