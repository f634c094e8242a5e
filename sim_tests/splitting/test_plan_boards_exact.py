"""`splitrack plan --n-boards N`: exactly N boards, the best plan of that size for each objective (against brute
force), a one-line error naming the fewest and most boards possible otherwise; figures printed with the
decimals that tell plans apart; implausible estimates named with the reason; `-o` does not replace another plan."""
import pytest

from test_plan_search import PYNQ, _opts, brute_force, chain  # noqa: F401  (chain is a fixture)
from harness.cli.plan import decimals, implausible, pareto_table
from splitting.estimates import Estimate
from splitting.estimators import Analytic
from splitting.layerspec import HlsConfig, LayerSpec
from splitting.search import NoFitError, PartChoice, plan_search


def test_exactly_n_boards_is_the_best_plan_of_that_size(chain, tmp_path):  # noqa: F811
    est = Analytic(PYNQ, cache=tmp_path)
    every = brute_force(chain, est, _opts())
    counts = sorted({t[0] for t in every})
    assert len(counts) >= 3
    keys = {"boards": lambda t: (t[1], t[2]), "latency": lambda t: (t[1], t[2]), "interval": lambda t: (t[2], t[1])}
    for n in counts:
        for objective, key in keys.items():
            res = plan_search(chain, est, _opts(objective=objective, boards_exact=n))
            best = min((t for t in every if t[0] == n), key=key)
            assert res.best.boards == n, (n, objective)
            assert res.best.latency_us == pytest.approx(best[1]) and res.best.interval_cycles == pytest.approx(best[2])


def test_a_dominated_board_count_is_still_found(chain, tmp_path):  # noqa: F811
    # with a large hop cost, plans with more boards are dominated on (boards, latency, interval) by smaller
    # ones: the Pareto search drops them; an exactly-N search must still find the best plan of each size
    est = Analytic(PYNQ, cache=tmp_path)
    opts = dict(hop_overhead_us=1000.0, cap=1.0)
    every = brute_force(chain, est, _opts(**opts))
    counts = sorted({t[0] for t in every})
    front = {p.boards for p in plan_search(chain, est, _opts(**opts), pareto=True).pareto}
    assert set(counts) - front, "the case must hold a board count that only an exactly-N search finds"
    for n in counts:  # (brute_force prices hops at its own HOP_US: compare the interval, which has no hops)
        res = plan_search(chain, est, _opts(boards_exact=n, objective="interval", **opts))
        assert res.best.boards == n
        assert res.best.interval_cycles == pytest.approx(min(t[2] for t in every if t[0] == n))


def test_impossible_board_count_is_one_line_with_the_range(chain, tmp_path):  # noqa: F811
    est = Analytic(PYNQ, cache=tmp_path)
    counts = sorted({t[0] for t in brute_force(chain, est, _opts())})
    with pytest.raises(NoFitError) as e:
        plan_search(chain, est, _opts(boards_exact=counts[-1] + 5))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"the fewest boards possible is {counts[0]}, the most {counts[-1]}" in msg
    assert f"plan with --n-boards {counts[0]} (or without --n-boards: the fewest)" in msg  # what to type next
    assert "--fifo-depth" not in msg  # the default depths were assumed: no hint about them
    with pytest.raises(NoFitError) as e:
        plan_search(chain, est, _opts(boards_exact=counts[-1] + 5, fifo_depth="default"))
    assert "without --fifo-depth default" in str(e.value)


def test_boards_and_boards_available_together_are_refused():
    from splitting.errors import UserError

    with pytest.raises(UserError, match="not both"):
        _opts(boards_exact=2, boards_available=3)


def test_decimals_tell_values_apart():
    assert decimals([1.0, 2.0]) == 0
    assert decimals([1.4, 1.0]) == 1  # 1.4 cycles must not print as 1
    assert decimals([1.04, 1.0]) == 2
    assert decimals([203.2, 203.25], least=1) == 2


def test_pareto_table_shows_a_fractional_interval():
    from splitting.search import PlanChoice

    a = PlanChoice([], 1, 203.2, 1.4, 0.0)
    b = PlanChoice([], 3, 404.3, 1.0, 0.0)
    rows = pareto_table([a, b])[2:]
    assert rows[0].split()[2] == "1.4" and rows[1].split()[2] == "1.0"


def _part(units, fan, dsp, reuse=1, estimator="rule4ml"):
    spec = LayerSpec("Dense", "d", (fan,), (units,), units=units, activation="linear")
    cfg = HlsConfig("ap_fixed<16,6>", reuse, "Latency")
    return PartChoice("layers", ["d"], (spec,), cfg, Estimate(1000, 1000, dsp, 1, 10, 1, estimator))


def test_implausible_estimates_are_named_with_the_reason():
    opts = _opts()
    low = implausible(_part(128, 64, dsp=0.9), opts)  # 8192 products at reuse 1 on under one DSP
    assert len(low) == 1 and "implausibly low" in low[0] and "8192 parallel multipliers" in low[0]
    high = implausible(_part(10, 64, dsp=57.9, reuse=64), opts)  # 10 multipliers at reuse 64, 58 DSP
    assert len(high) == 1 and "implausibly high" in high[0] and "reuse 64" in high[0]
    assert implausible(_part(128, 64, dsp=8192 / 2), opts) == []  # within the closed form's factor
    assert implausible(_part(128, 64, dsp=0.9, estimator="analytic"), opts) == []  # rule4ml figures only


def test_plan_o_and_split_o_refuse_to_replace_another_plan(tmp_path, capsys):
    import keras

    from harness.cli.commands import main

    m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu", name="a"),
                          keras.layers.Dense(4, name="b")])
    m.save(tmp_path / "m.keras")
    model, out = str(tmp_path / "m.keras"), str(tmp_path / "plan")
    assert main(["split", model, "--at", "a", "-o", out]) == 0
    before = (tmp_path / "plan" / "plan.json").read_text()
    assert main(["split", model, "--at", "a", "-o", out]) == 0  # the same plan again: allowed
    capsys.readouterr()
    assert main(["split", model, "-o", out]) == 2  # another plan: refused, nothing written
    err = capsys.readouterr().err
    assert "holds another plan" in err and "--force" in err and err.count("\n") == 1
    assert (tmp_path / "plan" / "plan.json").read_text() == before
    assert main(["plan", model, "--estimator", "analytic", "--n-boards", "1", "-o", out]) == 2
    assert (tmp_path / "plan" / "plan.json").read_text() == before
    assert main(["plan", model, "--estimator", "analytic", "--n-boards", "1", "-o", out, "--force"]) == 0
    assert (tmp_path / "plan" / "plan.json").read_text() != before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["split", model, "-o", str(tmp_path / "other")]) == 2
