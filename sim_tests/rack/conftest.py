"""Fixtures of the rack tests: a small virtual rack per test module, the digits FC plan cut in three."""
import pytest

from harness.rack.virtual_rack import rack_down, rack_up


@pytest.fixture(scope="module")
def rack_file(tmp_path_factory):
    """A 3-board virtual rack of this test module (its rack file), stopped after the module's tests."""
    d = tmp_path_factory.mktemp("rack")
    rack_up(3, d / "rack.toml", state=d / "state", progress=lambda s: None)
    yield d / "rack.toml"
    rack_down(d / "rack.toml")


@pytest.fixture(scope="session")
def plan3(tmp_path_factory):
    """The digits FC model cut after fc1 and fc2: three partitions, one per board of `rack_file`."""
    from splitting.plan import Plan
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    folder = tmp_path_factory.mktemp("fc3")
    write_plan(plan, models, folder)
    return Plan.load(folder)
