"""Issue 10: every model a user brings splits exactly or is refused in one line, never a traceback.

One test per fault kind, with the right value as expectation, plus every CLI command on every field case
(../shared/cases) checked for tracebacks. Models are tiny; hls4ml projects come from the content-hash cache.
"""
import json
import shutil
import subprocess
import zipfile

import keras
import numpy as np
import pytest

from harness.cli.commands import main
from splitting.chain import keras_runner, run_chain
from splitting.emulation import EmulationLib
from splitting.emulation_guard import EmulationCrash, predict_isolated
from splitting.errors import UserError
from splitting.fold import FoldError, fold_batchnorm
from splitting.graph import load_model
from splitting.plan import Plan
from splitting.split import split_model, write_plan

TOL = 1e-5


def _cli(capsys, argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _errors(err):
    return [l for l in err.strip().splitlines() if l.startswith("splitrack")]


def _rel_err(model, plan, models, x):
    ref = model(x, training=False).numpy()
    out = run_chain(plan, x, lambda name, inp: models[name](inp, training=False).numpy())
    return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(w.dtype) if "variance" in v.name
                               else rng.normal(0, 0.5, w.shape).astype(w.dtype) for v, w in zip(layer.weights, ws)])
    return model


# --- BatchNormalization ----------------------------------------------------------------------------------
def test_batchnorm_is_folded_exactly_and_recorded(field_cases, tmp_path):
    model = load_model(field_cases / "dense_bn.keras")
    plan, models = split_model(model, neurons={"d1": 2})
    assert plan.model["batchnorm_folded"] == {"bn1": "d1", "bn2": "d2"}
    assert not any(type(l).__name__ == "BatchNormalization" for m in models.values() for l in m.layers)
    x = np.load(field_cases / "dense_bn.npz")["x"]
    assert _rel_err(model, plan, models, x) <= TOL
    write_plan(plan, models, tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert saved["model"]["batchnorm_folded"] == {"bn1": "d1", "bn2": "d2"}
    assert (tmp_path / "p" / saved["model"]["hls_source"]).is_file()


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_batchnorm_after_conv_folds_exactly(center, scale):
    model = _randomise(keras.Sequential([
        keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, use_bias=False, name="c"),
        keras.layers.BatchNormalization(center=center, scale=scale, epsilon=0.01, name="bn"),
        keras.layers.ReLU(name="r"), keras.layers.Flatten(name="f"), keras.layers.Dense(2, name="o")]), seed=3)
    folded, which = fold_batchnorm(model)
    assert which == {"bn": "c"}
    x = np.random.default_rng(0).uniform(-4, 4, (16, 6, 6, 3)).astype(np.float32)
    ref = model(x, training=False).numpy()
    assert np.max(np.abs(folded(x).numpy() - ref)) <= TOL * np.max(np.abs(ref))


@pytest.mark.parametrize("before", [
    [],  # it reads the model input
    [keras.layers.Dense(4, activation="relu", name="d")],  # its host applies an activation first
    [keras.layers.Dense(4, name="d"), keras.layers.Activation("tanh", name="t")],  # it follows an activation
])
def test_batchnorm_with_nothing_to_fold_into_stays_a_layer(before):
    # hls4ml converts a BatchNormalization alone, and fuses it only where fold_batchnorm folds it: the
    # whole model and the partitions compute the same; the float chain is exact
    model = _randomise(keras.Sequential([keras.Input((5,)), *[type(l).from_config(l.get_config()) for l in before],
                                         keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(2, name="o")]),
                       seed=4)
    folded, which = fold_batchnorm(model)
    assert which == {} and folded is model
    plan, models = split_model(model, at=["bn"])
    assert "bn" in plan.partition("s0").layers
    x = np.random.default_rng(1).uniform(-4, 4, (32, 5)).astype(np.float32)
    assert _rel_err(model, plan, models, x) <= TOL


def test_batchnorm_after_depthwise_folds_exactly():
    model = _randomise(keras.Sequential([
        keras.Input((6, 6, 3)), keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw"),
        keras.layers.BatchNormalization(epsilon=0.01, name="bn"), keras.layers.ReLU(name="r"),
        keras.layers.GlobalAveragePooling2D(name="g"), keras.layers.Dense(2, name="o")]), seed=5)
    folded, which = fold_batchnorm(model)
    assert which == {"bn": "dw"}
    x = np.random.default_rng(0).uniform(-4, 4, (16, 6, 6, 3)).astype(np.float32)
    ref = model(x, training=False).numpy()
    assert np.max(np.abs(folded(x).numpy() - ref)) <= TOL * np.max(np.abs(ref))


# --- what hls4ml cannot convert ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sepconv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sep") / "sepconv.keras"
    _randomise(keras.Sequential([keras.Input((6, 6, 2)), keras.layers.SeparableConv2D(3, 3, name="sep"),
                                 keras.layers.Flatten(name="fl"), keras.layers.Dense(2, name="out")],
                                name="sepconv")).save(path)
    return path


def test_split_refuses_a_layer_hls4ml_cannot_convert_before_writing(capsys, tmp_path, sepconv_file):
    code, out, err = _cli(capsys, ["split", sepconv_file, "--at", "sep", "-o", tmp_path / "p"])
    assert code == 2 and "Traceback" not in err
    lines = _errors(err)
    assert len(lines) == 1 and "'sep' (SeparableConv2D)" in lines[0] and "partition s0" in lines[0]
    assert not (tmp_path / "p" / "plan.json").exists()


def test_verify_turns_an_hls4ml_failure_into_one_line(capsys, tmp_path, sepconv_file):
    """A plan written without the check (an older splitrack): verify names the partition and the layer."""
    plan, models = split_model(keras.models.load_model(sepconv_file, compile=False), at=["sep"])
    write_plan(plan, models, tmp_path / "p")
    code, out, err = _cli(capsys, ["verify", tmp_path / "p", "-n", "4"])
    assert code == 2 and "Traceback" not in err
    lines = _errors(err)
    assert len(lines) == 1 and "'sep' (SeparableConv2D)" in lines[0]
    assert "partition s0" in lines[0] or "the whole model" in lines[0]


def test_a_crashing_emulation_is_one_line_and_verify_survives(tmp_path):
    """A compiled emulation that aborts (as one field model's does) kills only the child process."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++")
    src = tmp_path / "boom.cpp"
    src.write_text('#include <cstdlib>\nextern "C" void boom_double(double *a, double *b) { std::abort(); }\n')
    lib = tmp_path / "libboom.so"
    subprocess.run([gxx, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    emu = EmulationLib(str(lib), "boom", 3, 2)
    with pytest.raises(EmulationCrash) as e:
        predict_isolated(emu, np.zeros((2, 3)), what="partition s7 (layers x)")
    msg = str(e.value)
    assert "partition s7" in msg and "SIGABRT" in msg and "\n" not in msg
    assert isinstance(e.value, UserError)


# --- verify exercises the whole range -----------------------------------------------------------------------
def test_verify_wide_range_catches_a_cap_that_data_in_0_1_misses(tmp_path, capsys):
    """A part whose ReLU lost its cap agrees with the original on [0, 1] and differs beyond the cap."""
    d = keras.layers.Dense(4, use_bias=False, name="d")
    model = keras.Sequential([keras.Input((4,)), d, keras.layers.ReLU(max_value=2.0, name="r"),
                              keras.layers.Dense(2, name="o")])
    d.set_weights([np.eye(4, dtype=np.float32) * 0.5])  # [0, 1] inputs stay below the cap
    model.get_layer("o").set_weights([np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32), np.zeros(2, np.float32)])
    plan, models = split_model(model, neurons={"d": 2})
    dense = next(l for l in models["s0_0"].layers if type(l).__name__ == "Dense")
    uncapped = keras.Sequential([keras.Input((4,)), type(dense).from_config(dense.get_config()),
                                 keras.layers.ReLU(name="r_n0")], name="s0_0")
    uncapped.layers[0].set_weights(dense.get_weights())
    models["s0_0"] = uncapped
    write_plan(plan, models, tmp_path / "p")
    code, out, err = _cli(capsys, ["verify", tmp_path / "p", "--no-hls", "--json", "-n", "64"])
    d = json.loads(out)
    assert d["data_used"][0]["float_rel_err"] <= TOL  # random data in [0, 1]: the wrong plan would pass
    assert d["data_used"][1]["float_rel_err"] > TOL and d["data_used"][1]["name"].startswith("wide")
    assert code == 1 and d["ok"] is False


# --- wording -----------------------------------------------------------------------------------------------
def test_cut_after_a_reshape_before_a_softmax_is_allowed_and_exact(field_cases):
    model = load_model(field_cases / "reshape_softmax.keras")
    plan, models = split_model(model, at=["rs"])
    x = np.load(field_cases / "reshape_softmax.npz")["x"]
    assert _rel_err(model, plan, models, x) <= TOL and len(plan.stages) == 2


def test_plan_on_a_two_input_model_says_so(capsys, tmp_path):
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    path = tmp_path / "two.keras"
    keras.Model([a, b], keras.layers.Dense(2, name="o")(keras.layers.Add(name="add")([a, b]))).save(path)
    code, out, err = _cli(capsys, ["plan", path, "--estimator", "analytic"])
    assert code == 2 and _errors(err) and "the model has 2 inputs" in _errors(err)[0]


# --- HGQ2 --------------------------------------------------------------------------------------------------
def test_model_with_layers_of_an_unknown_package_names_the_package(field_cases, tmp_path):
    src, dst = field_cases / "leaky_relu.keras", tmp_path / "odd.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                cfg["config"]["layers"][1]["module"] = "fancyq.layers"
                cfg["config"]["layers"][1]["class_name"] = "FancyDense"
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(UserError) as e:
        load_model(dst)
    assert "'fancyq'" in str(e.value) and "FancyDense" in str(e.value) and "Keras 3 as .keras" not in str(e.value)


def test_hgq2_neuron_split_is_refused_in_one_line(field_cases):
    pytest.importorskip("hgq")
    with pytest.raises(UserError) as e:
        split_model(load_model(field_cases / "hgq2_mlp.keras"), neurons={"qd1": 2})
    assert "'qd1'" in str(e.value) and "--at" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_hgq2_sequential_split_is_bit_exact(field_cases, tmp_path, capsys):
    """HGQ2 model cut after each quantised layer: float chain exact, hls chain bit-exact against hls4ml's
    emulation of the whole model (the links carry the types hls4ml infers there)."""
    pytest.importorskip("hgq")
    code, out, err = _cli(capsys, ["split", field_cases / "hgq2_mlp.keras", "--at", "qd1,qd2", "-o", tmp_path / "p"])
    assert code == 0, err
    plan = Plan.load(tmp_path / "p")
    assert all(c.dtype != "ap_fixed<16,6>" for c in plan.links)  # each link has the quantiser's own type
    code, out, err = _cli(capsys, ["verify", tmp_path / "p", "--data", field_cases / "hgq2_mlp.npz", "--json"])
    d = json.loads(out)
    assert code == 0 and d["ok"] and d["hls_bit_exact"] and d["hls_chain_max_abs_err"] == 0.0
    assert d["float_max_abs_err"] == 0.0


# --- every CLI command on every field case ------------------------------------------------------------------
CASES = {
    "leaky_relu": ["--neurons", "d1:2"],
    "prelu": ["--neurons", "d1:2"],
    "dense_bn": ["--neurons", "d1:2"],
    "zero_padding": ["--at", "c1"],
    "reshape_softmax": ["--at", "rs"],
    "hgq2_mlp": ["--at", "qd1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_commands_on_field_cases_never_traceback(case, field_cases, tmp_path, capsys):
    """split + verify pass (float within 1e-5 on wide inputs, hls bit-exact), or exit 2 with one line;
    plan works or exits 2 with one line. Never a traceback."""
    model = field_cases / f"{case}.keras"
    if not model.is_file():
        pytest.skip(f"{case} was not built here (its package is missing)")
    code, out, err = _cli(capsys, ["split", model, *CASES[case], "-o", tmp_path / "p"])
    assert "Traceback" not in err and (code == 0 or (code == 2 and len(_errors(err)) == 1)), err
    if code == 0:
        code, out, err = _cli(capsys, ["verify", tmp_path / "p", "--data", field_cases / f"{case}.npz", "--json"])
        assert "Traceback" not in err
        d = json.loads(out)
        assert code == 0 and d["ok"] and d["hls_bit_exact"], d
        assert all(u["float_rel_err"] <= TOL for u in d["data_used"]) and len(d["data_used"]) == 2
    code, out, err = _cli(capsys, ["plan", model, "--estimator", "analytic", "-o", tmp_path / "planned"])
    assert "Traceback" not in err and (code == 0 or (code == 2 and len(_errors(err)) == 1)), err
