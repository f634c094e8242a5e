"""RTL cosimulation of a plan with a skip link (issue 21): the producer's fork feeds the next stage and, on
its own FIFO, a stage further on; the consumer of two tensors takes their flat concatenation. Every beat of
every interface is checked (protocol and data) and the outputs must equal the plan's hls4ml emulation."""
import pytest

pytestmark = pytest.mark.cosim


def _dense_skip_model():
    import keras

    keras.utils.set_random_seed(11)
    L = keras.layers
    inp = keras.Input((10,), name="x")
    a = L.Dense(8, activation="relu", name="a")(inp)
    b = L.Dense(6, activation="relu", name="b")(a)
    c = L.Dense(5, activation="relu", name="c")(b)
    out = L.Dense(4, name="out")(L.Concatenate(name="cat")([c, a]))
    return keras.Model(inp, out, name="dense_skip")


@pytest.fixture(scope="module")
def skip_plan(tmp_path_factory):
    from splitting.plan import Plan
    from splitting.split import split_model, write_plan

    plan, models = split_model(_dense_skip_model(), at=["a", "c"])
    folder = tmp_path_factory.mktemp("plan") / "skip"
    write_plan(plan, models, folder)
    return Plan.load(folder)


def test_plan_has_a_skip_link(skip_plan):
    assert [(c.src, c.dst) for c in skip_plan.skip_links] == [("s0", "s2")]
    assert skip_plan.partition("s2").input_shapes == [[5], [8]]


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_skip_link_chain_passes_protocol_and_matches_emulation(skip_plan, sim):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(skip_plan, sim, n_frames=6)
    assert r.ok and r.outputs_match and not r.violations, r.summary()
    assert {(l.src, l.dst) for l in r.links} >= {("s0", "s1"), ("s0", "s2"), ("s1", "s2")}


def test_skip_link_protocol_fault_is_caught(skip_plan):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(skip_plan, "icarus", n_frames=4, mutant=1)
    assert not r.ok and r.violations
