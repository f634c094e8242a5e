"""The fast model (harness/agent/fast_model.py) against hls4ml's emulation library, bit for bit: every partition of
the reference plans, random models like the property tests', and the virtual board's check and fallback."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from harness.agent.fast_kernel import Kernel
from harness.agent.fast_model import FastBackend, FastModel, NotModelled, check_frames
from harness.rack import fast_build
from harness.rack.fast_build import board_files, model_of


@pytest.fixture(scope="module")
def kernel():
    """The compiled kernel, as deploy builds it (cached by its source's hash)."""
    lib = fast_build.build_kernel()
    assert lib is not None, "no C compiler works here: the fast model's kernel cannot be built"
    return Kernel(lib)

PLANS = {
    "fc-sequential": ("fc", dict(at=["fc1", "fc2"])),
    "cnn-sequential": ("cnn", dict(at=["conv2", "fc1"])),
    "cnn-neuron": ("cnn", dict(neurons={"fc1": 2})),
    "cnn-input": ("cnn", dict(inputs={"fc1": 2})),
}


def _write(model, kw, folder):
    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    plan, models = split_model(model, **kw)
    write_plan(plan, models, folder)
    return Plan.load(folder)


def _all_partitions_exact(plan, first_frames, kernel):
    """Each partition on its real inputs (the plan's emulation chain) and on random full-range inputs, with
    the compiled kernel and on numpy only. Returns the kernel model's layer modes."""
    from splitting import hls
    from splitting.chain import run_chain

    checked, modes = [], {}

    def run(name, x):
        emu = hls.emulation(plan, name)
        for k in (None, kernel):
            fm = model_of(plan, name, k)
            for frames in (x, check_frames(fm.in_type, emu.n_in, 16, seed=7)):
                ours, theirs = fm.run(frames), emu.predict(frames)
                assert np.array_equal(ours, theirs.reshape(ours.shape)), (plan.root, name, fm.modes)
        modes.update(fm.modes)
        checked.append(name)
        return emu.predict(x, plan.partition(name).output_shape)

    run_chain(plan, first_frames, run)
    assert sorted(checked) == sorted(plan.partitions)
    return modes


@pytest.mark.parametrize("name", list(PLANS))
def test_reference_plans_bit_exact(name, tmp_path, kernel):
    from splitting.reference_models import digits_data, model_inputs, reference_model

    model, kw = PLANS[name]
    plan = _write(reference_model(model), kw, tmp_path / name)
    modes = _all_partitions_exact(plan, model_inputs(model, digits_data()[2][:40]), kernel)
    # the reference models' ap_fixed<16,6> products all lose bits to accum_t: every layer runs the kernel
    assert modes and set(modes.values()) == {"kernel"}, modes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11])
def test_random_models_bit_exact(seed, tmp_path, kernel):
    """Random MLPs and CNNs (the property tests' shapes: relu/tanh/sigmoid/linear/softmax, same/valid,
    maxpool), split."""
    import keras

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    w = [int(v) for v in rng.integers(4, 24, size=3)]
    mlp = keras.Sequential([keras.Input((w[0],)), keras.layers.Dense(w[1], activation="relu", name="d0"),
                            keras.layers.Dense(w[2], activation={3: "tanh", 11: "sigmoid"}[seed], name="d1"),
                            keras.layers.Dense(5, activation="softmax", name="d2")])
    _all_partitions_exact(_write(mlp, dict(at=["d0"], neurons={"d1": 2}), tmp_path / "mlp"),
                          rng.normal(size=(16, w[0])) * 2, kernel)
    pad = ["same", "valid"][seed % 2]
    cnn = keras.Sequential([keras.Input((7, 7, 2)),
                            keras.layers.Conv2D(int(rng.integers(2, 8)), 3, padding=pad, activation="relu", name="c1"),
                            keras.layers.Conv2D(int(rng.integers(2, 8)), 2, padding=pad, activation="tanh", name="c2"),
                            keras.layers.MaxPooling2D(2, name="pool"), keras.layers.Flatten(name="flat"),
                            keras.layers.Dense(5, activation="softmax", name="out")])
    _all_partitions_exact(_write(cnn, dict(at=["c1"]), tmp_path / "cnn"), rng.uniform(size=(8, 7, 7, 2)), kernel)


def test_unmodelled_layer_is_named(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="elu", name="d0")])
    plan = _write(m, {}, tmp_path / "elu")
    name = plan.ordered_partitions()[0].name
    with pytest.raises(NotModelled, match="elu"):
        model_of(plan, name)
    # deploy's view: no model file, the emulation backend, and a note saying why (the agent reports it)
    files, backend = board_files(plan, name, {"kind": "emulation", "library": "partition.so"})
    assert files == {} and backend["kind"] == "emulation" and backend["library"] == "partition.so"
    assert "elu" in backend["note"] and "emulation library" in backend["note"], backend


def test_sigmoid_and_tanh_tables_on_every_input_value(tmp_path):
    """hls4ml's sigmoid and tanh are table lookups (nnet_activation_stream.h): every one of the 65536 values
    of the input type ap_fixed<16,6>, through each, equals the emulation library (the index's truncation
    toward zero, both clipped ends, the table values computed with expf / tanh as the C++ does)."""
    import keras

    from splitting import hls

    m = keras.Sequential([keras.Input((8,)), keras.layers.Activation("sigmoid", name="a0"),
                          keras.layers.Activation("tanh", name="a1"), keras.layers.Dense(3, name="d")])
    plan = _write(m, dict(at=["a0"]), tmp_path / "tables")
    for name in ("s0", "s1"):
        fm = model_of(plan, name)
        assert [o["kind"] for o in fm.ops][1] == ("sigmoid" if name == "s0" else "tanh")
        raw = np.arange(fm.in_type.raw_min, fm.in_type.raw_max + 1).reshape(-1, 8)
        x = raw * fm.in_type.step
        ours, theirs = fm.run(x), hls.emulation(plan, name).predict(x)
        assert np.array_equal(ours, theirs.reshape(ours.shape)), name


@pytest.fixture(scope="module")
def fc_first(tmp_path_factory):
    from splitting import hls
    from splitting.hls import ARTIFACT, project_dir
    from splitting.reference_models import reference_model
    import json

    plan = _write(reference_model("fc"), dict(at=["fc1"]), tmp_path_factory.mktemp("fcb") / "p")
    name = plan.ordered_partitions()[0].name
    emu = hls.emulation(plan, name)
    meta = json.loads((project_dir(plan, name) / ARTIFACT).read_text())
    folder = project_dir(plan, name)
    cfg = {"kind": "fast", "model": "", "library": str(folder / meta["library"]), "project": meta["project"],
           "n_in": emu.n_in, "n_out": emu.n_out, "check_frames": 4}
    return plan, name, cfg


class _Emu:
    kind = "emulation"

    def __init__(self, cfg, base):
        from splitting.emulation import EmulationLib

        self.lib = EmulationLib(cfg["library"], cfg["project"], cfg["n_in"], cfg["n_out"])

    def run(self, x):
        return self.lib.run(x)


def test_backend_uses_the_fast_model_only_when_it_matches(fc_first, tmp_path, caplog, monkeypatch):
    plan, name, cfg = fc_first
    fm = model_of(plan, name)
    good = tmp_path / "good.npz"
    fm.save(good)
    b = FastBackend(dict(cfg, model=str(good)), str(tmp_path), _Emu)
    assert b.kind == "fast"
    x = check_frames(fm.in_type, cfg["n_in"], 3, seed=5)
    for f in x:
        assert np.array_equal(b.run(f), b.emulation.run(f))

    # one weight off by one LSB: the check at start finds it, the board runs the emulation library
    ops = [dict(o) for o in fm.ops]
    arrays = dict(fm._arrays)
    key = next(k for k in arrays if k.endswith("/weight"))
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] += 1 << 10
    bad = tmp_path / "bad.npz"
    FastModel(ops, arrays).save(bad)
    with caplog.at_level(logging.WARNING):
        b = FastBackend(dict(cfg, model=str(bad)), str(tmp_path), _Emu, logging.getLogger("t"))
    assert b.kind == "emulation" and "differ" in b.note
    assert "this board runs hls4ml's emulation library instead" in caplog.text
    assert np.array_equal(b.run(x[0]), b.emulation.run(x[0]))

    # no model file at all: the same fallback, with the reason
    b = FastBackend(dict(cfg, model=str(tmp_path / "none.npz")), str(tmp_path), _Emu)
    assert b.kind == "emulation" and "cannot read" in b.note

    # a model that raises while computing the check frames: said in words, no exception repr
    def broken(self, frames):
        raise ValueError("9 inputs for a product with 144")
    monkeypatch.setattr(FastModel, "run", broken)
    b = FastBackend(dict(cfg, model=str(good)), str(tmp_path), _Emu)
    assert b.kind == "emulation" and "ValueError" not in b.note, b.note
    assert "could not compute the 4 check frames (9 inputs for a product with 144)" in b.note, b.note
    assert b.note.endswith("this board runs hls4ml's emulation library instead (bit-exact, slower)"), b.note


def test_board_files_for_a_virtual_board(fc_first):
    plan, name, cfg = fc_first
    emu_cfg = dict(cfg, kind="emulation")
    files, backend = board_files(plan, name, emu_cfg)
    assert backend["kind"] == "fast" and backend["model"] == "partition.fast.npz"
    assert backend["library"] == cfg["library"]
    model = FastModel.load(files["partition.fast.npz"])
    x = check_frames(model.in_type, cfg["n_in"], 8, seed=2)
    from splitting import hls
    assert np.array_equal(model.run(x), hls.emulation(plan, name).predict(x))


@pytest.mark.parametrize("python", ["host", pytest.param("3.8", marks=pytest.mark.slow)])
def test_agents_on_fast_models_equal_the_chained_emulation(fc_plan, tmp_path, python, request):
    """The agent's backend kind "fast" with fast_model.py and its compiled kernel beside it, as a virtual board
    carries them; also under Python 3.8 (a board's)."""
    from harness.agent.files import agent_files
    from harness.rack.local_rack import LocalRack
    from harness.measure.stream import Pipeline
    from harness.rack.wiring import emulation_backend
    from splitting import hls
    from splitting.chain import emulation_runner, run_chain
    from splitting.reference_models import digits_data

    assert {"harness/agent/fast_model.py", "harness/agent/fast_kernel.py"} <= set(agent_files())  # shipped
    backends = {}
    for name in fc_plan.partitions:
        lib = hls.emulation(fc_plan, name)
        files, backends[name] = board_files(fc_plan, name, emulation_backend(fc_plan, name, lib.library, lib.project))
        backends[name]["model"] = files["partition.fast.npz"]
        backends[name]["kernel"] = files["libfastkernel.so"]
    x = digits_data()[2][:40].reshape(40, 64)
    ref = run_chain(fc_plan, x, emulation_runner(fc_plan))
    py = {"python": request.getfixturevalue("python38")} if python == "3.8" else {}
    with LocalRack(tmp_path, **py) as rack:
        wiring = rack.start(fc_plan, backends, in_flight=4)
        with Pipeline(wiring) as pipe:
            res = pipe.stream(x, in_flight=4, timeout=20)
    np.testing.assert_array_equal(res.outputs(), ref)
    logs = "".join(p.read_text() for p in tmp_path.rglob("agent-*.log"))
    assert logs.count("backend fast: fast model == emulation library") == len(fc_plan.partitions), logs[-2000:]
    assert logs.count("(compiled kernel: ") == len(fc_plan.partitions), logs[-2000:]


def _kernel_reference(x, w, bias, s, acc_t):
    """What the kernel computes, in plain int64 numpy: wrap_acc_t(bias + sum_k floor(x*w / 2^s))."""
    acc = bias + ((x[:, :, None] * w[None, :, :]) >> s).sum(axis=1)
    return acc_t.overflow(acc)


@pytest.mark.parametrize("acc", ["ap_fixed<16,6>", "ap_fixed<32,12>", "ap_fixed<20,8>", "ap_ufixed<12,4>",
                                 "ap_ufixed<31,10>", "ap_fixed<8,3>"])
def test_kernel_equals_the_plain_integer_sum(kernel, acc):
    """Random raws of 16-bit inputs and weights (products up to 2^30), zero rows and columns (ReLU outputs),
    every shift the reference types give and more: the kernel's sum wrapped to accum_t equals int64 numpy's,
    on one row and on many."""
    from splitting.contract import FixedType

    acc_t = FixedType.parse(acc)
    rng = np.random.default_rng(len(acc))
    for s in (0, 1, 6, 10, 17):
        for m, k, n in ((1, 9, 16), (64, 144, 32), (5, 7, 3), (3, 1, 1)):
            x = rng.integers(-(1 << 15), 1 << 15, size=(m, k))
            x[rng.random(size=x.shape) < 0.4] = 0
            w = rng.integers(-(1 << 15), 1 << 15, size=(k, n))
            bias = acc_t.overflow(rng.integers(-(1 << 40), 1 << 40, size=n))
            got = kernel.prepare(w, bias, s, acc_t)(x)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, _kernel_reference(x, w, bias, s, acc_t), err_msg=(acc, s, m, k, n))


def test_kernel_refuses_what_it_does_not_compute(kernel):
    from splitting.contract import FixedType

    w, b = np.ones((2, 2)), np.zeros(2)
    for t, s in (("ap_fixed<33,10>", 4), ("ap_ufixed<32,10>", 4), ("ap_fixed<16,6,AP_TRN,AP_SAT>", 4),
                 ("ap_fixed<16,6>", -1)):
        with pytest.raises(ValueError, match="does not compute"):
            kernel.prepare(w, b, s, FixedType.parse(t))


def test_without_a_compiler_the_model_stays_on_numpy(fc_first, monkeypatch, tmp_path, caplog):
    """No C compiler on the host: build says why and returns None, board_files ships no kernel, and the
    model runs (bit exact) on numpy."""
    from splitting import hls

    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fast_build, "COMMAND", ("no-such-cc-splitrack",) + fast_build.COMMAND[1:])
    with caplog.at_level(logging.INFO):
        assert fast_build.build_kernel() is None
    assert "kernel not built" in caplog.text and "numpy" in caplog.text
    plan, name, cfg = fc_first
    files, backend = board_files(plan, name, dict(cfg, kind="emulation"))
    assert "libfastkernel.so" not in files and "kernel" not in backend
    model = FastModel.load(files["partition.fast.npz"])
    assert set(model.modes.values()) == {"split"}
    x = check_frames(model.in_type, cfg["n_in"], 8, seed=3)
    assert np.array_equal(model.run(x), hls.emulation(plan, name).predict(x))


def test_backend_with_a_kernel_that_does_not_load_runs_numpy(fc_first, kernel, tmp_path):
    """A damaged kernel library on a board: the fast backend says so, checks the numpy model and runs it; a
    good one is used and named in the note."""
    plan, name, cfg = fc_first
    fm = model_of(plan, name)
    model = tmp_path / "m.npz"
    fm.save(model)
    (tmp_path / "libfastkernel.so").write_bytes(b"not a library")
    b = FastBackend(dict(cfg, model=str(model), kernel="libfastkernel.so"), str(tmp_path), _Emu)
    assert b.kind == "fast" and "not loaded" in b.note and "(numpy)" in b.note
    assert set(b.model.modes.values()) == {"split"}
    good = FastBackend(dict(cfg, model=str(model), kernel=kernel.path), str(tmp_path), _Emu)
    assert good.kind == "fast" and "compiled kernel: " in good.note
    x = check_frames(fm.in_type, cfg["n_in"], 3, seed=9)
    for f in x:
        assert np.array_equal(good.run(f), b.emulation.run(f)) and np.array_equal(b.run(f), good.run(f))


def test_an_agent_imported_on_the_host_runs_the_fast_model_it_is_asked_for(fc_first, tmp_path):
    """An agent imported on the host as a package module (as the tests and benchmarks use it), configured for
    the "fast" backend, runs the fast model: its backend says so and a frame through the agent's compute step
    is the fast model's (the agent does not quietly fall back to the emulation library)."""
    import socket

    from harness.agent import wire
    from harness.agent.agent import Agent, Conn
    from harness.rack.wiring import Endpoint, agent_config

    plan, name, cfg = fc_first
    nxt = {c.dst: Endpoint("next", "127.0.0.1", 1) for c in plan.outputs_of(name) if c.dst != "host"}
    model = tmp_path / "m.npz"
    model_of(plan, name).save(model)
    backend = dict(cfg, model=str(model))
    (tmp_path / "agent.secret").write_text(wire.new_secret().hex())
    ag = Agent(agent_config(plan, name, nxt, backend, listen_port=0), str(tmp_path))
    ag.load_backend()
    assert ag.backend.kind == "fast" and ag.backend.model is not None, ag.backend.note
    assert ag.health()["backend"] == "fast"
    ran = []
    run = ag.backend.model.run
    ag.backend.model.run = lambda frames: ran.append(len(frames)) or run(frames)
    c = ag.inputs[0]
    x = check_frames(ag.backend.model.in_type, cfg["n_in"], 1, seed=4)[0]
    a, b = socket.socketpair()  # the next hop: a frame goes out on it
    ag.links[ag.routes[0][2]] = Conn(a, "next hop")
    ag._advance(1, (c.encode(x),), b"", (0,))  # a frame through the agent's compute and send steps
    assert ran == [1]  # the fast model computed the frame
    out = ag.outputs[0][0]
    b.settimeout(10)
    got = wire.Reader(b, max_payload=out.payload_bytes).message()
    np.testing.assert_array_equal(out.decode(got[5]), out.decode(out.encode(ag.backend.emulation.run(x))))
    a.close()
    b.close()


def test_planner_reuse_and_strategy_settings_bit_exact(tmp_path, kernel):
    """Per-layer reuse factors and strategies as `splitrack plan` writes them (hls4ml LayerName entries):
    Conv2D and Dense under Resource (whose weights hls4ml stores transposed, and whose sum runs in reuse order)
    at reuse factors below, equal to and above the layer's fan-in, beside Latency layers with a reuse factor,
    compute bit-exact against the emulation, with the compiled kernel and on numpy. Two partitions: two
    hls4ml compiles."""
    import keras

    keras.utils.set_random_seed(5)
    m = keras.Sequential([keras.Input((6, 6, 2)),
                          keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c1"),  # fan-in 18
                          keras.layers.Conv2D(3, 2, activation="relu", name="c2"),                  # fan-in 20
                          keras.layers.MaxPooling2D(2, name="pool"), keras.layers.Flatten(name="flat"),
                          keras.layers.Dense(7, activation="relu", name="d1"),                      # fan-in 12
                          keras.layers.Dense(4, name="d2")])                                        # fan-in 7
    from splitting.split import split_model, write_plan
    from splitting.plan import Plan

    plan, models = split_model(m, at=["c2"], reuse_factor=4, strategy="Resource")
    layers = {"c1": (6, "Resource"), "c2": (20, "Resource"), "d1": (84, "Resource"), "d2": (7, "Latency")}
    for p in plan.partitions.values():
        names = p.hls.setdefault("LayerName", {})
        for lname, (r, strategy) in layers.items():
            if lname in [l.name for l in models[p.name].layers]:
                names.setdefault(lname, {}).update({"ReuseFactor": r, "Strategy": strategy})
    write_plan(plan, models, tmp_path / "p")
    plan = Plan.load(tmp_path / "p")
    x = np.random.default_rng(5).uniform(-2, 2, size=(12, 6, 6, 2))
    modes = _all_partitions_exact(plan, x, kernel)
    assert set(modes) == set(layers), modes
    # the reuse factors hls4ml kept: below, at and above the fan-in under Resource; d2 on Latency
    reuse = {o["name"]: o["params"].get("resource_reuse") for n in ("s0", "s1") for o in model_of(plan, n).ops}
    assert {k: reuse[k] for k in layers} == {"c1": 6, "c2": 20, "d1": 84, "d2": None}, reuse


def test_saturating_sum_in_resource_order_is_refused_up_front():
    """A saturating accumulator under the Resource strategy with a reuse factor > 1: hls4ml adds the products in
    reuse order, which the fast model does not follow: model_from_ops refuses it, naming the layer (the
    partition stays on its emulation), instead of a check failing on the board; wrapping accumulators (any
    order gives the same sum) and reuse factor 1 are modelled."""
    from harness.cosim.ops import Op
    from splitting.contract import FixedType

    t, sat = FixedType.parse("ap_fixed<16,6>"), FixedType.parse("ap_fixed<16,6,AP_TRN,AP_SAT>")

    def ops(acc, reuse):
        w = np.arange(12, dtype=np.int64).reshape(4, 3) - 6
        dense = Op("dense", "fc9", (3,), t, params={"resource_reuse": reuse}, weight=w, bias=np.zeros(3, np.int64),
                   wtype=t, btype=t, accum=acc)
        return [Op("input", "in", (4,), t), dense]

    with pytest.raises(NotModelled, match="fc9: saturating accumulator .* reuse factor 4"):
        fast_build.model_from_ops(ops(sat, 4))
    for acc, reuse in ((t, 4), (sat, 1)):
        assert fast_build.model_from_ops(ops(acc, reuse)).run(np.ones((2, 4))).shape == (2, 3)
