"""`splitrack bench` input handling (the measurement itself is tested in test_measure_* and test_nightly)."""
import numpy as np
import pytest

from harness.measure.bench import bench_data
from harness.cli.commands import main
from harness.rack.local_rack import identity_plan
from splitting.errors import UserError


def test_digits_frames_cycle_and_labels_cover_one_pass():
    plan = identity_plan(stages=1, shape=(64,))
    x, y = bench_data(plan, 1000, "auto")
    assert x.shape == (1000, 64) and 0 <= x.min() and x.max() <= 1
    n = len(y)  # the digits test set (450 images): labels of one pass only
    assert n == 450 and np.array_equal(x[:n], x[n:2 * n])


def test_random_data_for_other_shapes_and_clear_errors():
    plan = identity_plan(stages=1, shape=(4, 4, 2))
    x, y = bench_data(plan, 10, "auto")
    assert x.shape == (10, 4, 4, 2) and y is None
    with pytest.raises(UserError, match="--data random"):
        bench_data(plan, 10, "digits")


def test_missing_plan_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope"), "--boards", str(tmp_path / "rack.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitrack bench: error:") and "\n" not in err
