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


@pytest.fixture(scope="session")
def field_cases(tmp_path_factory):
    """The field cases of ../shared/cases (issue 10), built once per session with the project's Python.
    The script lives outside the repository; the tests that use it are skipped where it is absent."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / ".." / ".." / "shared" / "cases" / "models" / "make_cases.py"
    script = script if script.is_file() else Path("/work/shared/cases/models/make_cases.py")
    if not script.is_file():
        pytest.skip("the field cases script (shared/cases/models/make_cases.py) is not on this machine")
    out = tmp_path_factory.mktemp("field_cases")
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=600)
    return out
