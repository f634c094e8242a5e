"""`splitrack bench` input handling (the measurement itself is tested in test_measure_* and test_nightly)."""
import numpy as np
import pytest

from harness.jobs.bench import bench_data
from harness.cli.commands import main
from identity_plan import identity_plan
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


# --- the one --data loader (splitting.eval_data) ---------------------------------------------------------
from splitting.eval_data import DataError, load  # noqa: E402


def test_users_npz_and_npy(tmp_path):
    x = np.arange(5 * 64, dtype=np.float64).reshape(5, 8, 8) / 320
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 2, 3, 4, 5]))
    d = load(str(tmp_path / "d.npz"), (64,))
    assert d.x.shape == (5, 64) and d.x.dtype == np.float32 and list(d.y) == [1, 2, 3, 4, 5] and d.note == ""
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(10)[[3, 1, 4, 1, 5]])
    assert list(load(str(tmp_path / "onehot.npz"), (64,)).y) == [3, 1, 4, 1, 5]
    np.save(tmp_path / "d.npy", x)
    d = load(str(tmp_path / "d.npy"), (8, 8, 1), n=3)
    assert d.x.shape == (3, 8, 8, 1) and d.y is None
    plan = identity_plan(stages=1, shape=(64,))
    bx, by = bench_data(plan, 12, str(tmp_path / "d.npz"))
    assert bx.shape == (12, 64) and len(by) == 5  # cycled frames, labels of one pass


def test_digits_says_it_is_splitracks_own_split():
    d = load("digits", (64,))
    assert d.source == "digits" and "splitrack's own split" in d.note and "overlap" in d.note


@pytest.mark.parametrize("make, match", [
    (lambda p: np.savez(p, inputs=np.zeros((2, 64))), "no array 'x'"),
    (lambda p: np.savez(p, x=np.zeros((2, 63))), "63 values"),
    (lambda p: np.savez(p, x=np.full((2, 64), np.nan)), "NaN"),
    (lambda p: np.savez(p, x=np.zeros((2, 64)), y=np.array([1, 2, 3])), "one integer label per frame"),
    (lambda p: np.savez(p, x=np.zeros((2, 64)), y=np.array([0.5, 1.0])), "one integer label per frame"),
    (lambda p: np.savez(p, x=np.array([{"a": 1}, None], dtype=object)), "not a readable numpy file"),
    (lambda p: p.write_bytes(b"not numpy at all"), "not a readable numpy file"),
])
def test_bad_user_files_are_one_line_errors(tmp_path, make, match):
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(DataError, match=match):
        load(str(p), (64,))



def test_bench_png_parts_add_up_or_say_why(tmp_path):
    from synthetic_history import bench_doc

    from harness.jobs.bench import critical_parts, plot

    doc = bench_doc(0)
    parts, e2e, what = critical_parts(doc["reports"]["single"])
    assert list(parts) == doc["reports"]["single"]["hops"]
    assert sum(parts.values()) == pytest.approx(e2e, abs=0.01) and "add up" in what
    del doc["reports"]["stream"]["samples_us"]  # an old document: medians, with the reason they do not add up
    parts, e2e, what = critical_parts(doc["reports"]["stream"])
    assert "need not add up" in what and e2e == doc["reports"]["stream"]["stats"]["e2e"]["p50"]
    png = plot(doc, tmp_path / "bench.png")
    assert png.stat().st_size > 20_000


def test_bench_checks_every_modes_outputs_against_the_chained_emulation(fc_plan):
    """A rack that computes something else is not a bench result: each mode's outputs are compared bit for
    bit with the plan's chained hls4ml emulation (one element off in one frame counts)."""
    import types

    from harness.jobs.bench import _emulation_mismatches
    from splitting.chain import emulation_runner, run_chain
    from splitting.reference_models import digits_data

    x = digits_data()[2][:12].reshape(12, 64)
    ref = np.asarray(run_chain(fc_plan, x, emulation_runner(fc_plan)))
    off = ref.copy()
    off.reshape(12, -1)[5, 3] += 2.0 ** -10  # one step of the output type, one element, one frame
    results = {"single": types.SimpleNamespace(outputs=lambda: ref), "stream": types.SimpleNamespace(outputs=lambda: off)}
    assert _emulation_mismatches(fc_plan, x, results) == {"single": 0, "stream": 1}
