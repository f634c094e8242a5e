"""Fixtures shared by several test files."""
import pytest

from splitting.plan import Plan
from splitting.reference import reference_model
from splitting.split import split_model, write_plan


@pytest.fixture(scope="session")
def fc_plan(tmp_path_factory):
    """The FC reference model split all three ways: cut after fc1, fc2 neuron-split, fc3 input-split + join.
    Tests that compile it share the hls4ml cache."""
    folder = tmp_path_factory.mktemp("fc_plan")
    plan, models = split_model(reference_model("fc"), at=["fc1"], neurons={"fc2": 2}, inputs={"fc3": 2})
    write_plan(plan, models, folder)
    return Plan.load(folder)
