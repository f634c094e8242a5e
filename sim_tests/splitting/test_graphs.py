"""Graphs cut anywhere (issue 21): every crossing tensor its own link, partitions with several inputs and
outputs, skip links; checked against Keras (float chain), hls4ml's emulation of the whole model (bit for
bit), and the real agents (run_local)."""
import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from splitting.chain import keras_runner, run_chain
from splitting.contract import Contract, Select, assemble, gather
from splitting.graph import LayerGraph, SplitError
from splitting.hls_errors import HlsUnsupported
from splitting.hls_support import check_known_crashes
from splitting.split import HLS_DEFAULTS, split_model, write_plan

TOL = 1e-5
L = keras.layers


def _rel_err(model, plan, models, x):
    ref = model.predict(x, verbose=0)
    out = run_chain(plan, x, keras_runner(models))
    return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-12))


# --- random graphs --------------------------------------------------------------------------------------
def _random_graph(data, conv: bool):
    """A model of blocks drawn by hypothesis: residual adds, concatenations, multi-branch blocks, and
    concatenations with a tensor from several blocks back (a skip across stages)."""
    seed = data.draw(st.integers(0, 10_000), "seed")
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 3) if conv else (8,), name="x")
    width = 4
    lay = (lambda n, name, act=None: L.Conv2D(n, 3, padding="same", activation=act, name=name)) if conv else \
        (lambda n, name, act=None: L.Dense(n, activation=act, name=name))
    x = lay(width, "stem", "relu")(inp)
    history = [x]
    for b in range(data.draw(st.integers(1, 4), "blocks")):
        kind = data.draw(st.sampled_from(["residual", "concat", "branches", "skip", "plain"]), f"block{b}")
        if kind == "residual":
            y = lay(width, f"b{b}_a", "relu")(x)
            y = lay(width, f"b{b}_b")(y)
            x = L.ReLU(name=f"b{b}_relu")(L.Add(name=f"b{b}_add")([x, y]))
        elif kind == "concat":
            y = lay(width, f"b{b}_a", "tanh")(x)
            x = lay(width, f"b{b}_mix")(L.Concatenate(name=f"b{b}_cat")([x, y]))
        elif kind == "branches":
            ys = [lay(width, f"b{b}_p{i}", "relu")(x) for i in range(3)]
            x = L.Add(name=f"b{b}_sum")(ys)
        elif kind == "skip":  # a tensor from the start of the model, read again here
            x = lay(width, f"b{b}_mix", "relu")(L.Concatenate(name=f"b{b}_cat")([x, history[0]]))
        else:
            x = lay(width, f"b{b}_d", "relu")(x)
        history.append(x)
    if conv:
        x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, name="out")(x)
    return keras.Model(inp, out, name="random_graph")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_graphs_cut_anywhere_float_chain_exact(data):
    conv = data.draw(st.booleans(), "conv")
    model = _random_graph(data, conv)
    g = LayerGraph.of(model)
    at = data.draw(st.lists(st.sampled_from(g.order[:-1]), unique=True, max_size=4), "at")
    try:
        plan, models = split_model(model, at=at)
    except SplitError as e:  # the one refusal left: a cut between a layer and its activation
        assert "\n" not in str(e) and "activation" in str(e)
        return
    assert len(plan.stages) == len(set(at)) + 1
    for p in plan.ordered_partitions():  # each partition reads and writes what its links say
        ins = plan.inputs_of(p.name)
        assert len(p.input_shapes or [p.input_shape]) == len({c.dst_input for c in ins})
    shape = (6, 6, 3) if conv else (8,)
    x = np.random.default_rng(0).uniform(-2, 2, (16,) + shape).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


def test_flat_links_assemble_and_take_as_a_board_does():
    # producer with two outputs (4 and 2x3 elements) as one flat stream; consumer reading both as 2 inputs
    a = Contract("p", "c", (4,), "ap_fixed<16,6>", select=Select(-1, 0, 4, flat=True), dst_input=1)
    b = Contract("p", "c", (2, 3), "ap_fixed<16,6>", select=Select(-1, 4, 10, flat=True), dst_input=0, src_output=1)
    y = np.arange(10.0)
    assert b.take(y).shape == (2, 3) and a.take(y).tolist() == [0, 1, 2, 3]
    assert assemble([a, b], [a.take(y), b.take(y)]).tolist() == [4, 5, 6, 7, 8, 9, 0, 1, 2, 3]
    batch = np.stack([y, y + 10])
    assert b.take(batch).shape == (2, 2, 3)
    assert assemble([a, b], [a.take(batch), b.take(batch)]).shape == (2, 10)
    assert [t.shape for t in gather([a, b], [a.take(batch), b.take(batch)])] == [(2, 2, 3), (2, 4)]
    # and the wire: a plan of chains writes neither field (its hash stays)
    assert "dst_input" not in Contract("p", "c", (4,), "float32").to_dict()
    assert Contract.from_dict(b.to_dict()) == b


# --- a plan with a skip link (sim_tests/conftest.py: skip_plan), against hls4ml and the agents ------------
def test_skip_plan_has_the_links_of_the_graph(skip_plan):
    plan = skip_plan
    assert [len(s.partitions) for s in plan.stages] == [1, 1, 1]
    assert {(c.src, c.dst) for c in plan.skip_links} == {("host", "s2")}  # the input, read again by 'cat'
    assert plan.partition("s0").output_shapes == [[4, 4, 4], [4, 4, 4]]  # 'a' and 'b_relu', both read by s1
    assert plan.partition("s2").input_shapes == [[4, 4, 4], [4, 4, 2]]
    assert plan.model["batchnorm_folded"] == {"b_bn": "b"}


def test_skip_plan_verifies_bit_exact_against_the_whole_model(skip_plan):
    from splitting.verify import verify_plan

    v = verify_plan(skip_plan, n=64, log=lambda m: None)
    assert v.float_ok and v.hls_bit_exact and v.hls_chain_max_abs_err == 0.0


def test_skip_plan_runs_through_the_agents_equal_to_the_chained_emulation(skip_plan, tmp_path):
    from harness.jobs.run import run_local
    x = np.random.default_rng(3).uniform(0, 1, (12, 4, 4, 2)).astype(np.float32)
    summary = run_local(skip_plan, x, None, tmp_path, progress=lambda m: None)
    # run_local checks every answer of the agents against the chained emulation (RunError otherwise)
    assert summary["complete"] and summary["frames_received"] == 12
    assert summary["checked_against_emulation"] and summary["emulation_mismatches"] == 0


# --- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,shape,crashes", [
    (L.AveragePooling2D(3, strides=2, padding="same"), (8, 8, 3), True),
    (L.MaxPooling2D(2, padding="same"), (7, 7, 3), True),
    (L.AveragePooling1D(3, strides=2, padding="same"), (8, 3), True),
    (L.AveragePooling2D(2, padding="same"), (8, 8, 3), False),  # 'same' that pads nothing
    (L.AveragePooling2D(3, padding="valid"), (8, 8, 3), False),
])
def test_pooling_that_hls4ml_aborts_on_is_refused_naming_hls4ml(layer, shape, crashes):
    inp = keras.Input(shape)
    model = keras.Model(inp, type(layer).from_config(layer.get_config())(inp))
    if not crashes:
        check_known_crashes(model, HLS_DEFAULTS, "the model")
        return
    with pytest.raises(HlsUnsupported) as e:
        check_known_crashes(model, HLS_DEFAULTS, "partition s0")
    assert "hls4ml" in str(e.value) and "nnet_pooling_stream.h" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("layer", [L.Activation("relu6", name="act"), L.Dense(3, activation="relu6", name="act")])
def test_activation_hls4ml_has_no_stream_version_of_is_refused(layer):
    inp = keras.Input((4,))
    model = keras.Model(inp, type(layer).from_config(layer.get_config())(inp))
    with pytest.raises(HlsUnsupported) as e:
        check_known_crashes(model, HLS_DEFAULTS, "partition s0")
    assert "'act'" in str(e.value) and "io_stream relu6" in str(e.value) and "\n" not in str(e.value)


def test_split_refuses_padded_pooling_before_writing(tmp_path):
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(2, 3, name="c")(inp)
    x = L.AveragePooling2D(3, strides=2, padding="same", name="pool")(x)
    model = keras.Model(inp, L.Dense(2, name="o")(L.Flatten(name="f")(x)))
    model.save(tmp_path / "m.keras")
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "split", str(tmp_path / "m.keras"), "--at", "c",
                        "-o", str(tmp_path / "p")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'pool' (AveragePooling2D)" in r.stderr and "hls4ml" in r.stderr
    assert not (tmp_path / "p" / "plan.json").exists()


def test_one_list_of_layers_refuses_the_same_way_in_split_and_plan():
    from splitting.errors import UserError
    from splitting.layerspec import model_specs

    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2, name="o")(L.GaussianNoise(0.1, name="noise")(L.Dense(4, name="a")(inp))))
    for refuse in (lambda: model_specs(model), lambda: split_model(model, at=["a"])):
        with pytest.raises(UserError, match=r"'noise' \(GaussianNoise\) is not one splitrack handles"):
            refuse()
    # a layer split takes where hls4ml converts it (test_hls_guard runs one) but no estimator models:
    # the planner names it
    emb = keras.Sequential([keras.Input((6,), dtype="int32"), L.Embedding(13, 3, name="emb"), L.Flatten(name="fl"),
                            L.Dense(2, name="out")])
    plan, _ = split_model(emb, at=["fl"])
    assert len(plan.partitions) == 2
    with pytest.raises(UserError, match=r"'emb' \(Embedding\): the planner has no estimate of it"):
        model_specs(emb)


@pytest.mark.parametrize("estimator", ["analytic", "auto"])
def test_the_planner_prices_every_layer_kind_split_takes(estimator):
    """Every priced kind of splitting/layers.py (convolutions 1D and 2D, depthwise, pooling and global
    pooling, merges, data movement, activations, an unfolded BatchNormalization) becomes a LayerSpec the
    estimators answer for, with finite figures at every resource."""
    from splitting import catalog
    from splitting.estimators import make
    from splitting.layers import SUPPORTED, UNPRICED
    from splitting.layerspec import HlsConfig, model_specs

    inp = keras.Input((8, 8, 3), name="x")
    bn = L.BatchNormalization(name="bn_in")(inp)  # reads the model input: a layer of its own
    z = L.ZeroPadding2D(1, name="zp")(bn)
    c = L.Conv2D(4, 3, name="c")(z)
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(c)
    r6 = L.ReLU(name="relu")(d)
    a = L.Add(name="add")([r6, c])
    m = L.Multiply(name="mul")([a, c])
    cat = L.Concatenate(name="cat")([m, a])
    p = L.AveragePooling2D(2, name="ap")(cat)
    u = L.UpSampling2D(2, name="up")(p)
    mp = L.MaxPooling2D(2, name="mp")(u)
    g = L.GlobalAveragePooling2D(name="gap")(mp)
    rs = L.Reshape((8, 1), name="rs")(g)
    c1 = L.Conv1D(2, 3, activation="tanh", name="c1")(rs)
    gm = L.GlobalMaxPooling1D(name="gmp")(c1)
    out = L.Softmax(name="sm")(L.Dense(3, name="fc")(L.Dropout(0.1, name="do")(L.LeakyReLU(name="lr")(gm))))
    model = keras.Model(inp, out)
    used = {type(l).__name__ for l in model.layers} - {"InputLayer"}
    assert used <= set(SUPPORTED) and len({SUPPORTED[c] for c in used}) >= 9
    assert not any(SUPPORTED[c] == UNPRICED for c in used)
    _, specs, reads, unsplittable = model_specs(model)
    assert len(specs) == len(used) and [specs[i].name for i in unsplittable] == ["dw"]
    assert len(reads[[s.name for s in specs].index("cat")]) == 2  # a merge reads both its tensors
    # kinds the analytic model has a formula for (analytic_model._layer; it counts any other as free)
    from splitting.layerspec import COMPUTE, POOLING

    known = set(COMPUTE) | POOLING | {"Activation", "BatchNormalization", "Add", "Flatten", "Dropout"}
    assert {s.kind for s in specs} <= known, {s.kind for s in specs} - known
    board = catalog.board("pynq-z2")
    est = make(estimator, board)
    for s in specs:
        e = est.estimate_many([((s,), HlsConfig("ap_fixed<16,6>", 4, "Resource"))])[0]
        for f in ("lut", "ff", "dsp", "bram", "cycles", "interval"):
            for at in ("low", "point", "high"):
                v = e.bound(f, at)
                assert np.isfinite(v) and v >= 0, (s.name, f, at, v)


# --- the planner on graphs -----------------------------------------------------------------------------
def test_planner_costs_every_crossing_tensor_and_gives_exact_board_counts():
    from splitting import catalog
    from splitting.estimators import Analytic
    from splitting.layerspec import model_specs
    from splitting.search import Planner, SearchOptions

    keras.utils.set_random_seed(1)
    inp = keras.Input((16,), name="x")
    a = L.Dense(16, activation="relu", name="a")(inp)
    b = L.Dense(16, activation="relu", name="b")(a)
    c = L.Dense(16, activation="relu", name="c")(b)
    out = L.Dense(4, name="out")(L.Concatenate(name="cat")([c, a, inp]))
    model = keras.Model(inp, out)
    name, specs, reads, fixed = model_specs(model)
    assert [s.name for s in specs] == ["a", "b", "c", "cat", "out"]
    board = catalog.board("pynq-z2")
    for n in (2, 3, 4):
        pl = Planner(specs, Analytic(board), SearchOptions(board=board, boards_exact=n), reads=reads)
        best = pl.run().best
        assert best.boards == n
        # split it as planned: exactly n partitions, float chain exact
        plan, models = split_model(model, at=best.cut_after)
        assert len(plan.partitions) == n
        x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
        assert _rel_err(model, plan, models, x) <= TOL
    # cut after every layer: 'a' goes to s1 and, on a skip link, to s3; the input too
    plan, _ = split_model(model, at=["a", "b", "c"])
    assert {(c.src, c.dst) for c in plan.skip_links} == {("s0", "s3"), ("host", "s3")}
    # the stage that holds 'cat' reads c, a and the input: three tensors, three links' bytes
    assert pl._in_tensors(3, 5) == [16, 16, 16]
    # no cut of this graph but the ends leaves one tensor crossing (the input is read again by 'cat'), so no
    # layer may be split; in a chain every boundary is clean
    assert not any(pl._clean(b) for b in range(1, 4)) and pl._clean(4)  # after 'cat' only its output crosses
    chain = Planner(specs[:3], Analytic(board), SearchOptions(board=board))
    assert all(chain._clean(b) for b in range(4))


def test_mlperf_tiny_shapes_have_their_published_sizes():
    from splitting.mlperf_tiny import ARCHITECTURES, PARAMETERS

    for name, make in ARCHITECTURES.items():
        m = make()
        assert m.count_params() == PARAMETERS[name], name
    assert PARAMETERS["resnet8"] == 78666 and PARAMETERS["vww"] == 221794
