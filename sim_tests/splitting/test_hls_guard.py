"""One guard for every hls4ml failure, whatever the layer (issue 27): every command on models with an Embedding,
an LSTM, a GRU, and HGQ2 models with ZeroPadding1D/2D either works exactly or says in one line what hls4ml
cannot do (naming the layer), exit status 2, never a traceback.

What each did before: verify fed the Embedding indices outside its vocabulary (TensorFlow's
InvalidArgumentError), tried to swap the LSTM's activation (AttributeError: property 'activation' of 'LSTM'
object has no setter), and split crashed in hls4ml on the HGQ2 model (NotImplementedError: No implementation
of produce_kif ... ZeroPadding1D).
"""
from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from harness.cli.commands import main
from splitting.hls_errors import HlsUnsupported
from splitting.split import split_model, write_plan

CUTS = {"cut": ["--at", "d1"], "neuron": ["--neurons", "d1:2"], "input": ["--inputs", "d1:2"]}


def _cli(capsys, argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err[-3000:]
    return code, cap.out, [l for l in cap.err.strip().splitlines() if l.startswith("splitrack")]


def _weights(m, seed=0):
    rng = np.random.default_rng(seed)
    m.set_weights([rng.normal(0, 0.4, w.shape).astype(w.dtype) for w in m.get_weights()])
    return m


def _embedding():
    return _weights(keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(13, 3, name="emb"),
                                      keras.layers.Flatten(name="fl"), keras.layers.Dense(6, activation="relu", name="d1"),
                                      keras.layers.Dense(3, name="out")], name="emb"))


def _recurrent(kind):
    return _weights(keras.Sequential([keras.Input((4, 3)), getattr(keras.layers, kind)(3, name="rnn"),
                                      keras.layers.Dense(4, activation="relu", name="d1"),
                                      keras.layers.Dense(2, name="out")], name=kind.lower()))


def _hgq2_padding(dims):
    hgq = pytest.importorskip("hgq")  # noqa: F841
    from hgq.layers import QConv1D, QConv2D, QDense
    from hgq.utils import trace_minmax

    shape = (8, 2) if dims == 1 else (5, 5, 2)
    inp = keras.Input(shape, name="x")
    h = (keras.layers.ZeroPadding1D if dims == 1 else keras.layers.ZeroPadding2D)(1, name="zp")(inp)
    h = (QConv1D if dims == 1 else QConv2D)(3, 3, activation="relu", name="qc")(h)
    m = keras.Model(inp, QDense(2, name="qout")(keras.layers.Flatten(name="fl")(h)), name=f"hgq2_zp{dims}")
    trace_minmax(m, np.random.default_rng(3).uniform(-1, 1, (32,) + shape).astype("float32"), batch_size=32)
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("guard")
    for m in (_embedding(), _recurrent("LSTM"), _recurrent("GRU")):
        m.save(d / f"{m.name}.keras")
    return d


@pytest.mark.parametrize("model", ["emb", "lstm", "gru"])
@pytest.mark.parametrize("how", sorted(CUTS))
def test_split_then_verify_without_hls_is_exact(model, how, files, tmp_path, capsys):
    """Every split kind of every such model writes a plan whose float chain is exact, also over the whole
    range the model reads (an Embedding: its vocabulary)."""
    code, out, err = _cli(capsys, ["split", files / f"{model}.keras", *CUTS[how], "-o", tmp_path / "p"])
    assert code == 0, err
    code, out, err = _cli(capsys, ["verify", tmp_path / "p", "--no-hls", "--json", "-n", "64"])
    d = json.loads(out)
    assert code == 0 and d["float_ok"] and all(u["float_rel_err"] <= 1e-5 for u in d["data_used"])
    if model == "emb":
        wide = d["data_used"][1]
        assert "Embedding 'emb' reads integers below 13" in wide["name"] and (wide["min"], wide["max"]) == (0, 12)


@pytest.mark.parametrize("model", ["emb", "lstm"])
def test_verify_with_hls_is_bit_exact(model, files, tmp_path, capsys):
    code, out, err = _cli(capsys, ["split", files / f"{model}.keras", "--at", "d1", "-o", tmp_path / "p"])
    assert code == 0, err
    code, out, err = _cli(capsys, ["verify", tmp_path / "p", "--json", "-n", "32"])
    d = json.loads(out)
    assert code == 0 and d["ok"] and d["hls_bit_exact"] and d["float_max_abs_err"] == 0.0, d
    if model == "lstm":  # no quantisation rule for a recurrent cell: named, never called quantisation
        assert d["whole_within"] is None and any("layer rnn (LSTM)" in f for f in d["findings"])
    else:
        assert d["whole_within"] is True and d["chain_within"] is True


def test_data_outside_the_vocabulary_is_one_line(files, tmp_path, capsys):
    code, out, err = _cli(capsys, ["split", files / "emb.keras", "--at", "d1", "-o", tmp_path / "p"])
    np.savez(tmp_path / "bad.npz", x=np.full((4, 6), 13, np.float32))
    code, out, err = _cli(capsys, ["verify", tmp_path / "p", "--no-hls", "--data", tmp_path / "bad.npz"])
    assert code == 2 and len(err) == 1 and "x holds 13" in err[0] and "below 13" in err[0]


@pytest.mark.parametrize("model", ["emb", "lstm", "gru"])
def test_plan_works_or_refuses_in_one_line(model, files, tmp_path, capsys):
    code, out, err = _cli(capsys, ["plan", files / f"{model}.keras", "-o", tmp_path / "p"])
    layer = "emb" if model == "emb" else "rnn"
    # one line naming the layer (the planner prices none of these: it says so and how to cut by hand)
    assert code == 0 or (code == 2 and len(err) == 1 and re.search(rf"layer '?{layer}'?\b", err[0])), err


@pytest.mark.parametrize("dims", [1, 2])
def test_hgq2_padding_is_one_line_naming_the_layer_and_hls4ml(dims, tmp_path, capsys):
    """hls4ml 1.3 has no precision propagation (produce_kif) for padding layers in an HGQ2 model: split and
    plan refuse in one line, before writing anything; split_model raises the same HlsUnsupported."""
    m = _hgq2_padding(dims)
    path = tmp_path / f"{m.name}.keras"
    m.save(path)
    code, out, err = _cli(capsys, ["split", path, "--at", "qc", "-o", tmp_path / "p"])
    assert code == 2 and len(err) == 1, err
    assert f"layer 'zp' (ZeroPadding{dims}D)" in err[0] and "hls4ml 1.3" in err[0]
    assert not (tmp_path / "p").exists()
    code, out, err = _cli(capsys, ["plan", path, "--estimator", "analytic", "-o", tmp_path / "q"])
    assert code == 2 and len(err) == 1 and "zp" in err[0], err
    with pytest.raises(HlsUnsupported) as e:
        split_model(m, at=["qc"])
    assert "'zp'" in str(e.value) and "\n" not in str(e.value)


# --- the commands that build: a plan that converts, and one that does not -----------------------------------
@pytest.fixture(scope="module")
def rack(tmp_path_factory):
    from harness.rack.virtual_rack import rack_down, rack_up

    d = tmp_path_factory.mktemp("guard_rack")
    rack_up(2, d / "rack.toml", state=d / "state", progress=lambda s: None)
    yield d / "rack.toml"
    rack_down(d / "rack.toml")


@pytest.fixture(scope="module")
def plans(files, tmp_path_factory):
    """Cut plans of the Embedding and LSTM models, and one with a layer hls4ml cannot convert
    (SeparableConv2D), written without split's check (as an older splitrack wrote them)."""
    d = tmp_path_factory.mktemp("guard_plans")
    for name in ("emb", "lstm"):
        plan, models = split_model(keras.models.load_model(files / f"{name}.keras", compile=False), at=["d1"])
        write_plan(plan, models, d / name)
    sep = _weights(keras.Sequential([keras.Input((6, 6, 2)), keras.layers.SeparableConv2D(3, 3, name="sep"),
                                     keras.layers.Flatten(name="fl"), keras.layers.Dense(2, name="out")], name="sep"))
    plan, models = split_model(sep, at=["sep"])
    write_plan(plan, models, d / "sep")
    rng = np.random.default_rng(1)
    np.savez(d / "emb.npz", x=rng.integers(0, 13, (12, 6)).astype(np.float32))
    np.savez(d / "lstm.npz", x=rng.uniform(-2, 2, (12, 4, 3)).astype(np.float32))
    np.savez(d / "sep.npz", x=rng.uniform(-1, 1, (12, 6, 6, 2)).astype(np.float32))
    return d


@pytest.mark.parametrize("name", ["emb", "lstm"])
def test_rack_commands_run_the_plans_exactly(name, plans, rack, tmp_path, capsys):
    """run (every answer checked against the chained emulation) and deploy on a virtual rack; cosim, which
    has no RTL model of these layers, says so in one line."""
    code, out, err = _cli(capsys, ["run", plans / name, "--local", "--data", plans / f"{name}.npz", "--out", tmp_path])
    assert code == 0, err
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["frames"] == summary["frames_received"] == 12 and summary["emulation_mismatches"] == 0
    code, out, err = _cli(capsys, ["deploy", plans / name, "--boards", rack])
    assert code == 0, err
    code, out, err = _cli(capsys, ["cosim", plans / name, "--frames", "2", "--no-write"])
    assert code == 2 and len(err) == 1 and ("emb" if name == "emb" else "rnn") in err[0], err


@pytest.mark.parametrize("command", ["verify", "run", "deploy", "cosim", "bench"])
def test_every_command_names_the_layer_hls4ml_cannot_convert(command, plans, rack, capsys):
    argv = {"verify": ["verify", plans / "sep", "-n", "4"],
            "run": ["run", plans / "sep", "--local", "--data", plans / "sep.npz"],
            "deploy": ["deploy", plans / "sep", "--boards", rack],
            "cosim": ["cosim", plans / "sep", "--frames", "2", "--no-write"],
            "bench": ["bench", plans / "sep", "--boards", rack, "--frames", "4", "--data", plans / "sep.npz"]}[command]
    code, out, err = _cli(capsys, argv)
    assert code == 2 and len(err) == 1, err
    assert "'sep' (SeparableConv2D)" in err[0] and "hls4ml" in err[0], err
