"""Default plans a user can act on: the seed's two reference models, the hls4ml tutorial's jet-tagging MLP and a
67k-parameter 32x32 CNN planned with the defaults (estimator auto, the upper bound of every range under the
cap): no partition flagged implausible, every figure with its range, the reference CNN over at most the five
PYNQ-Z2 boards the seed deployed it on. Analytic estimates only (the committed choice): fast."""
import pytest

from harness.cli.commands import main
from splitting import catalog
from splitting.estimates import FIGURES
from splitting.estimators import choice, implausible, make
from splitting.layerspec import load_layers
from splitting.search import SearchOptions, plan_search

PYNQ = catalog.board("pynq-z2")


def _jet():
    import keras
    from keras import layers

    return keras.Sequential([keras.Input((16,)), layers.Dense(64, activation="relu", name="fc1"),
                             layers.Dense(32, activation="relu", name="fc2"), layers.Dense(32, activation="relu", name="fc3"),
                             layers.Dense(5, activation="softmax", name="output")], name="jet")


def _cnn32():
    import keras
    from keras import layers

    return keras.Sequential([keras.Input((32, 32, 1)), layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
                             layers.MaxPooling2D(2, name="pool1"), layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
                             layers.MaxPooling2D(2, name="pool2"), layers.Flatten(name="flat"),
                             layers.Dense(64, activation="relu", name="fc1"), layers.Dense(5, activation="softmax", name="out")],
                            name="cnn32")


def _reference(name):
    from splitting.reference_models import _architecture

    return _architecture(name)


MODELS = {"fc": lambda: _reference("fc"), "cnn": lambda: _reference("cnn"), "jet": _jet, "cnn32": _cnn32}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One splitrack cache for the module (estimates under estimates/): the models' runs are estimated once."""
    return tmp_path_factory.mktemp("splitrack-cache")


@pytest.mark.parametrize("name", list(MODELS))
def test_default_plans_fit_at_their_upper_bound_and_flag_nothing(name, cache):
    model = MODELS[name]()
    if name == "cnn32":
        assert 66_000 < model.count_params() < 68_000
    _, specs = load_layers(model)
    est = make("auto", PYNQ, cache=cache / "estimates")
    opts = SearchOptions(board=PYNQ)
    best = plan_search(specs, est, opts).best
    for part in best.partitions:
        e = part.estimate
        assert implausible(part.specs, part.config, e, PYNQ.capacity("dsp")) == []
        assert e.peak(PYNQ, "high") <= opts.cap + 1e-9, (name, part.layers)
        for f in FIGURES:
            assert e.bound(f, "low") <= e.bound(f) + 1e-9 <= e.bound(f, "high") + 2e-9, (name, f)
    if name == "cnn":
        assert best.boards <= 5  # the seed deployed this CNN on five PYNQ-Z2 boards
    if name in ("fc", "jet"):
        assert best.boards <= 5


def test_plan_prints_every_figure_with_its_range_and_names_the_estimator(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(cache))
    _reference("cnn").save(tmp_path / "cnn.keras")
    assert main(["plan", str(tmp_path / "cnn.keras")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].count("[") == 2  # latency and interval of the plan, each with its range
    assert out[1].startswith("estimates: ")
    rows = [ln for ln in out if ln.startswith("s")]
    assert rows
    for ln in rows:
        assert ln.count("[") == 6, ln  # LUT, FF, DSP, BRAM, cycles, interval
    assert "IMPLAUSIBLE" not in "\n".join(out)
    if "rule4ml" not in choice().values():
        assert "rule4ml" not in "\n".join(out)


def test_analytic_only_run_says_nothing_about_rule4ml(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    _jet().save(tmp_path / "jet.keras")
    assert main(["plan", str(tmp_path / "jet.keras"), "--estimator", "analytic", "--pareto"]) == 0
    captured = capsys.readouterr()
    assert "rule4ml" not in captured.out and "rule4ml" not in captured.err
    front = captured.out.split("non-dominated plans")[1].splitlines()[2:]
    assert front and all("latency [" in ln and "interval [" in ln for ln in front)  # the front's figures have ranges too


def test_fit_point_never_needs_more_boards_than_fit_high(cache):
    _, specs = load_layers(_reference("cnn"))
    est = make("analytic", PYNQ, cache=cache / "estimates")
    high = plan_search(specs, est, SearchOptions(board=PYNQ)).best
    point = plan_search(specs, est, SearchOptions(board=PYNQ, fit="point")).best
    assert point.boards <= high.boards
    assert all(p.estimate.peak(PYNQ, "point") <= 0.8 + 1e-9 for p in point.partitions)
