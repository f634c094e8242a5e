"""RTL cosimulation of the reference plans (the demo's CNN split three ways, and the FC net split three ways),
chained through link FIFOs, bit for bit against each plan's hls4ml emulation on digits images.

Slow (nightly): the CNN's fc1 (512 x 130) is unrolled by da4ml into about 330 k lines of Verilog per plan,
which Verilator builds in many minutes on two cores; builds are cached by content hash afterwards.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.cosim, pytest.mark.slow]

FC_PLANS = {
    "fc-sequential": dict(at=["fc1", "fc2"]),
    "fc-neuron": dict(neurons={"fc1": 2}),
    "fc-input": dict(inputs={"fc2": 2}),
}


def _plan(tmp_path_factory, model: str, name: str, kw: dict):
    from splitting.plan import Plan
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model(model), **kw)
    folder = tmp_path_factory.mktemp("ref") / name
    write_plan(plan, models, folder)
    return Plan.load(folder)


def _frames(model: str, n: int):
    from splitting.reference_models import digits_data, model_inputs

    return model_inputs(model, digits_data()[2][:n])


def _check(plan, model):
    from harness.cosim.cosim import cosimulate

    r = cosimulate(plan, "verilator", frames=_frames(model, 4), write_depths=True)
    print(r.summary())
    assert r.violations == [], r.violations[:5]
    assert r.outputs_match and r.ok
    assert all(a.endswith(")") and "==" in a for a in r.agreements), r.agreements
    from harness.cosim import record

    assert set(record.read_tuning(plan).fifo_depths) == set(range(len(plan.links)))  # tuning.json beside the plan


@pytest.mark.parametrize("name", list(FC_PLANS))
def test_fc_reference_plan(tmp_path_factory, name):
    _check(_plan(tmp_path_factory, "fc", name, FC_PLANS[name]), "fc")


def test_cnn_reference_plans(tmp_path_factory):
    from harness.jobs.demo import CNN_PLANS

    for name, kw in CNN_PLANS.items():
        _check(_plan(tmp_path_factory, "cnn", name, kw), "cnn")
