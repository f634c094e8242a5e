"""Agents running hls4ml emulation libraries (what a virtual board runs) give the plan's chained emulation
bit for bit: the FC reference model split all three ways (cut, neuron split, input split + join), the same
plan the verify tests compile, so the compiled partitions come from the shared cache."""
import json

import numpy as np
import pytest

from harness.cli import main
from harness.local_rack import LocalRack
from harness.stream import Pipeline
from splitting.chain import emulation_runner, run_chain
from splitting.plan import Plan
from splitting.reference import digits_data, reference_model
from splitting.split import split_model, write_plan


@pytest.fixture(scope="module")
def fc_plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fc_plan")
    plan, models = split_model(reference_model("fc"), at=["fc1"], neurons={"fc2": 2}, inputs={"fc3": 2})
    write_plan(plan, models, folder)
    return Plan.load(folder)


def test_agents_equal_the_chained_emulation_bit_for_bit(fc_plan, tmp_path):
    assert [s.kind for s in fc_plan.stages] == ["layers", "neuron", "input", "join"]
    _, _, x, y = digits_data()
    x = x[:150].reshape(150, 64)
    ref = run_chain(fc_plan, x, emulation_runner(fc_plan))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(fc_plan, "emulation", in_flight=4)
        with Pipeline(wiring) as pipe:
            res = pipe.stream(x, in_flight=6, timeout=20)
    out = res.outputs()
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)  # exact: same library, same fixed-point inputs, raw ints on the wire
    assert np.mean(np.argmax(out, axis=1) == y[:150]) > 0.9
    # and not trivially: the emulation's outputs are quantised, not Keras floats
    step = fc_plan.output_links[0].step
    assert np.all(np.abs(out / step - np.round(out / step)) == 0)


def test_run_command_local(fc_plan, tmp_path, capsys):
    assert main(["run", str(fc_plan.root), "--local", "--frames", "60", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "bit for bit: 60/60" in text
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["emulation_mismatches"] == 0 and summary["frames"] == 60
    assert set(summary["partitions"]) == set(fc_plan.partitions)
    assert (tmp_path / "run.png").stat().st_size > 10_000


def test_run_command_rejects_data_of_the_wrong_shape(fc_plan, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 10), np.float32))
    assert main(["run", str(fc_plan.root), "--local", "--data", str(tmp_path / "x.npy")]) == 2
    assert "the plan takes (64,)" in capsys.readouterr().err
