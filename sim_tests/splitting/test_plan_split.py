"""`splitrack plan` on models with a Dense layer too large for one PYNQ-Z2: the planner splits it (neuron or
input split), every partition is estimated under the cap, and the plan folder passes `splitrack verify`
(float composition and bit-exact hls4ml emulation chain). Models that cannot fit get an error naming the layer
and the smallest utilisation reachable.

The fast tests use the analytic estimator at its point figures (fit="point") and one strategy and reuse factor,
so that the layer sizes that need a split stay small enough to compile within the CI budget; the slow test
does it with rule4ml.
"""
import json

import pytest

from harness.cli.commands import main
from splitting import catalog
from harness.cli.plan import write
from splitting.estimators import Analytic
from splitting.layerspec import load_layers
from splitting.rule4ml_adapter import Rule4ml
from splitting.plan import Plan
from splitting.search import NoFitError, SearchOptions, plan_search
from splitting.verify import verify_plan

PYNQ = catalog.board("pynq-z2")


def _model(n_in, layers, name, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((n_in,))] + layers, name=name)
    # small weights so the fixed-point emulation stays in range; the values do not matter to the planner
    for layer in m.layers:
        layer.set_weights([w * 0.3 for w in layer.get_weights()])
    return m


@pytest.fixture(scope="module")
def wide():
    from keras import layers

    return _model(64, [layers.Dense(256, activation="relu", name="wide"), layers.Dense(10, name="out"),
                       layers.Activation("softmax", name="softmax")], "wide_fc")


def _under_cap(result, cap):
    for p in result.best.partitions:
        u = p.estimate.utilization(PYNQ)
        assert max(u.values()) <= cap, (p.layers, u)


def test_oversized_dense_gets_a_neuron_split_that_verifies(wide, tmp_path):
    _, specs = load_layers(wide)
    opts = SearchOptions(board=PYNQ, fit="point", strategies=("Resource",), reuse_factors=(64,))
    est = Analytic(PYNQ, cache=tmp_path / "est")
    # the layer alone does not fit at any configuration considered (16384 products at reuse 64: 256 DSPs)
    alone = est.estimate_many([((specs[0],), c) for c in opts.configs])
    assert min(e.peak(PYNQ) for e in alone) > opts.cap
    result = plan_search(specs, est, opts)
    best = result.best
    assert best.neurons == {"wide": 2} and not best.inputs
    assert [s.kind for s in best.stages] == ["neuron", "layers"]
    assert best.boards == 3
    _under_cap(result, opts.cap)

    folder = write(wide, best, opts, est.version, tmp_path / "plan")
    plan = Plan.load(folder)
    assert [p.name for p in plan.ordered_partitions()] == ["s0_0", "s0_1", "s1"]
    for p in plan.ordered_partitions():
        assert p.estimate["estimator"] == "analytic"
        assert max(p.estimate["utilization"].values()) <= opts.cap
    chosen = {p.name: p for p in plan.ordered_partitions()}
    for part, name in zip(best.partitions, ["s0_0", "s0_1", "s1"]):
        assert chosen[name].hls["Model"]["ReuseFactor"] == part.config.reuse_factor
        assert chosen[name].hls["Model"]["Strategy"] == part.config.strategy
    v = verify_plan(plan, data="random", n=64, log=lambda *a: None)
    assert v.float_ok and v.hls_ok and v.hls_bit_exact, v


def test_softmax_layer_too_large_gets_an_input_split_that_verifies(tmp_path):
    from keras import layers

    # a softmax cannot stay in neuron-split parts, so the planner must split the inputs and join
    m = _model(128, [layers.Dense(96, activation="softmax", name="cls")], "wide_cls", seed=1)
    _, specs = load_layers(m)
    opts = SearchOptions(board=PYNQ, fit="point", strategies=("Resource",), reuse_factors=(64,))
    est = Analytic(PYNQ, cache=tmp_path / "est")
    result = plan_search(specs, est, opts)
    best = result.best
    assert best.inputs == {"cls": 2} and not best.neurons
    assert [s.kind for s in best.stages] == ["input", "join"]
    _under_cap(result, opts.cap)
    plan = Plan.load(write(m, best, opts, est.version, tmp_path / "plan"))
    assert [p.kind for p in plan.ordered_partitions()] == ["input", "input", "join"]
    v = verify_plan(plan, data="random", n=64, log=lambda *a: None)
    assert v.float_ok and v.hls_ok, v


def test_cannot_fit_names_the_layer_and_smallest_utilisation(tmp_path):
    from keras import layers

    m = _model(64, [layers.Dense(256, activation="relu", name="wide"), layers.Dense(10, name="out")], "nofit")
    _, specs = load_layers(m)
    # at most 2 parts and only reuse factors up to 8: the smallest peak is a 2-way split at reuse 8 (8192/8
    # products = 1024 DSPs per part, 465 % of 220)
    opts = SearchOptions(board=PYNQ, reuse_factors=(1, 2, 4, 8), max_parts=2, fit="point")
    with pytest.raises(NoFitError) as err:
        plan_search(specs, Analytic(PYNQ, cache=tmp_path / "est"), opts)
    msg = str(err.value)
    assert "layer wide" in msg and "465% of DSP" in msg and "--max-parts" in msg


def test_cap_below_any_configuration_is_an_error_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    from keras import layers

    m = _model(16, [layers.Dense(8, activation="relu", name="tiny")], "tiny")
    m.save(tmp_path / "tiny.keras")
    rc = main(["plan", str(tmp_path / "tiny.keras"), "--estimator", "analytic", "--max-util", "0.0001"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert err.startswith("splitrack plan: error: layer tiny (Dense 16 -> 8) does not fit a pynq-z2 under the 0% cap")
    assert "smallest utilisation reachable is" in err


def test_cli_json_report_and_plan_folder(wide, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    wide.save(tmp_path / "wide.keras")
    rc = main(["plan", str(tmp_path / "wide.keras"), "--estimator", "analytic", "--objective", "latency",
               "--json", "-o", str(tmp_path / "plan")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("boards", "latency_us", "interval_cycles", "partitions"):
        assert key in out
    assert out["boards"] == len(out["partitions"])
    for p in out["partitions"]:
        for key in ("layers", "precision", "reuse_factor", "utilization", "cycles", "estimator"):
            assert key in p
        assert set(p["utilization"]) == {"lut", "ff", "dsp", "bram"}
        assert max(p["utilization"].values()) <= out["cap"]
    plan = Plan.load(tmp_path / "plan")
    assert [p.name for p in plan.ordered_partitions()] == [p["name"] for p in out["partitions"]]
    # the latency objective never does worse on latency than the fewest-boards plan
    rc = main(["plan", str(tmp_path / "wide.keras"), "--estimator", "analytic", "--json"])
    fewest = json.loads(capsys.readouterr().out)
    assert out["latency_us"] <= fewest["latency_us"] and fewest["boards"] <= out["boards"]


def test_boards_command(capsys):
    assert main(["boards"]) == 0
    text = capsys.readouterr().out
    assert "pynq-z2" in text and "xc7z020clg400-1" in text and "53,200" in text and "100 MHz" in text
    assert main(["boards", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    z2 = [b for b in d["boards"] if b["name"] == "pynq-z2"][0]
    assert (z2["lut"], z2["ff"], z2["dsp"], z2["bram"], z2["clock_mhz"]) == (53200, 106400, 220, 280, 100.0)


@pytest.mark.slow
def test_rule4ml_split_of_a_512x512_layer_verifies(tmp_path):
    """The same with rule4ml: on the reuse factors up to 64 a 512x512 Dense is over the cap at every configuration
    (81 % at best); with the default grid's larger ones (up to 4096) rule4ml puts it on one board, so the grid
    here stops at 64."""
    from keras import layers

    m = _model(512, [layers.Dense(512, activation="relu", name="big"), layers.Dense(10, name="out")], "big512")
    _, specs = load_layers(m)
    opts = SearchOptions(board=PYNQ, fit="point", plausible_only=False,  # rule4ml's figures as they are
                         reuse_factors=(1, 2, 4, 8, 16, 32, 64))
    est = Rule4ml(PYNQ, cache=tmp_path / "est")
    result = plan_search(specs, est, opts)
    assert result.best.neurons or result.best.inputs
    _under_cap(result, opts.cap)
    plan = Plan.load(write(m, result.best, opts, est.version, tmp_path / "plan"))
    v = verify_plan(plan, data="random", n=32, log=lambda *a: None)
    assert v.float_ok and v.hls_ok, v


def test_per_layer_reuse_and_strategy_reach_hls4ml_and_verify(tmp_path):
    """A partition whose Dense keeps pace with its Conv (36 pixels at reuse 1): the Dense gets reuse 32, both the
    Resource strategy, in the partition's hls4ml LayerName section, and the plan stays bit exact."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(2)
    m = keras.Sequential([keras.Input((6, 6, 2)), layers.Conv2D(4, 3, activation="relu", name="c"),
                          layers.Flatten(name="f"), layers.Dense(8, name="d"), layers.Activation("softmax", name="sm")],
                         name="pace")
    for layer in m.layers:
        layer.set_weights([w * 0.3 for w in layer.get_weights()])
    _, specs = load_layers(m)
    opts = SearchOptions(board=PYNQ, fit="point", cap=1.0, strategies=("Resource",), reuse_factors=(1,))
    est = Analytic(PYNQ, cache=tmp_path / "est")
    best = plan_search(specs, est, opts).best
    assert best.boards == 1
    plan = Plan.load(write(m, best, opts, est.version, tmp_path / "plan"))
    (part,) = plan.ordered_partitions()
    names = part.hls["LayerName"]
    assert names["c"] == {"ReuseFactor": 1, "Strategy": "Resource"}
    assert names["d"] == {"ReuseFactor": 32, "Strategy": "Resource"}
    assert part.estimate["layer_reuse"] == {"c": 1, "d": 32}
    v = verify_plan(plan, data="random", n=32, log=lambda *a: None)
    assert v.float_ok and v.hls_ok and v.hls_bit_exact, v
