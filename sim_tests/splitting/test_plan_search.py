"""The planner's dynamic programme against brute force: every set of cuts, every configuration per
partition, costs computed here from the issue's definitions; the optimum of each objective, the board limit
and the Pareto front must match exactly. Analytic estimator (no rule4ml import): fast and deterministic."""
import itertools
import math

import pytest

from splitting import catalog
from splitting.estimators import Analytic
from splitting.layerspec import load_layers
from splitting.search import SearchOptions, boundaries, plan_search

PYNQ = catalog.board("pynq-z2")
HOP_US = 0.5  # small, so that cycles matter against hops


@pytest.fixture(scope="module")
def chain():
    import keras
    from keras import layers

    m = keras.Sequential([
        keras.Input((48,)),
        layers.Dense(40, activation="relu", name="a"),
        layers.Dense(36, activation="relu", name="b"),
        layers.Dense(24, activation="tanh", name="c"),
        layers.Dense(10, name="d"),
        layers.Activation("softmax", name="sm"),
    ], name="chain")
    return load_layers(m)[1]


def _opts(**kw):
    # fit="point": the search against brute force at the point estimates (test_plan_ranges.py covers the ranges)
    base = dict(board=PYNQ, cap=0.8, reuse_factors=(1, 4, 16), strategies=("Latency", "Resource"), hop_overhead_us=HOP_US,
                fit="point")
    base.update(kw)
    return SearchOptions(**base)


def brute_force(specs, est, opts):
    """All plans without splits: (boards, latency_us, interval) for every cut set and configuration choice."""
    bounds = boundaries(specs)
    inner = bounds[1:-1]
    cfgs = opts.configs
    cache = {}

    def fig(i, j, c):
        if (i, j, c) not in cache:
            cache[(i, j, c)] = est.estimate(specs[i:j], c)
        return cache[(i, j, c)]

    def hop(elements):  # 16-bit values in 32-bit AXI beats: two per beat
        return HOP_US + math.ceil(elements / 2) * 4 * 8 / 1e3

    out = []
    for r in range(len(inner) + 1):
        for cuts in itertools.combinations(inner, r):
            edges = [0, *cuts, len(specs)]
            segs = list(zip(edges, edges[1:]))
            for choice in itertools.product(cfgs, repeat=len(segs)):
                es = [fig(i, j, c) for (i, j), c in zip(segs, choice)]
                if any(e.peak(PYNQ, opts.fit) > opts.cap for e in es):
                    continue
                lat = sum(e.cycles / PYNQ.clock_mhz + hop(math.prod(specs[i].input_shape)) for e, (i, _) in zip(es, segs))
                lat += hop(math.prod(specs[-1].output_shape))
                out.append((len(segs), lat, max(e.interval for e in es)))
    return out


def _front(triples):
    return sorted({t for t in triples if not any(o != t and o[0] <= t[0] and o[1] <= t[1] + 1e-9 and o[2] <= t[2] for o in triples)})


@pytest.mark.parametrize("cap", [0.8, 1.0])
def test_dp_equals_brute_force(chain, tmp_path, cap):
    est = Analytic(PYNQ, cache=tmp_path)
    opts = _opts(cap=cap)
    every = brute_force(chain, est, opts)
    assert len({t[0] for t in every}) > 1  # the case is not trivial: several board counts are possible
    keys = {"boards": lambda t: (t[0], t[1], t[2]), "latency": lambda t: (t[1], t[0], t[2]), "interval": lambda t: (t[2], t[0], t[1])}
    for objective, key in keys.items():
        res = plan_search(chain, est, _opts(cap=cap, objective=objective), pareto=True)
        best = min(every, key=key)
        got = (res.best.boards, res.best.latency_us, res.best.interval_cycles)
        assert got[0] == best[0] and got[1] == pytest.approx(best[1]) and got[2] == pytest.approx(best[2]), objective
        assert res.best.exact
    front = [(p.boards, round(p.latency_us, 6), p.interval_cycles) for p in res.pareto]
    want = [(b, round(l, 6), i) for b, l, i in _front(every)]
    assert sorted(front) == want


def test_board_limit(chain, tmp_path):
    est = Analytic(PYNQ, cache=tmp_path)
    every = brute_force(chain, est, _opts())
    for limit in (2, 3, 4):
        res = plan_search(chain, est, _opts(objective="interval", boards_available=limit))
        allowed = [t for t in every if t[0] <= limit]
        assert res.best.boards <= limit
        assert res.best.interval_cycles == min(t[2] for t in allowed)


def test_board_limit_too_small_is_a_clear_error(tmp_path):
    import keras
    from keras import layers

    from splitting.search import NoFitError

    m = keras.Sequential([keras.Input((64,)), layers.Dense(256, activation="relu", name="wide"), layers.Dense(10, name="out")])
    _, specs = load_layers(m)
    with pytest.raises(NoFitError, match=r"no plan fits in 2 board\(s\).*fewest boards that fit is 3: raise "
                       r"--boards-available to 3 or more, or allow smaller precisions \(--precisions"):
        plan_search(specs, Analytic(PYNQ, cache=tmp_path), _opts(boards_available=2, reuse_factors=(16, 64)))
