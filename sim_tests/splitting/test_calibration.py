"""The calibration set and the analytic model measured on it (no TensorFlow, no torch: fast).

The published figures are the reference: every row names its source; the analytic model, fitted on the other
rows, must land within its own range on most published figures; the committed per-kind estimator choice must
be what the set measures today (rerun benchmarks/calibration.py --write-choice when the set changes).
"""
import json

import pytest

from splitting import accuracy
from splitting import analytic_model as am
from splitting.calibration import DATA, FIGURES, load_rows, parse_chain
from splitting.errors import UserError
from splitting.estimators import CHOICE
from splitting.intervals import analytic_spread, analytic_estimate, loo_ratios
from splitting.layerspec import HlsConfig


def test_every_row_loads_and_names_its_source():
    rows = load_rows()
    assert len(rows) >= 30
    legend = DATA.read_text().split("\nid,")[0]
    for r in rows:
        assert f"{r.source} " in legend or f"{r.source}  " in legend, r.id  # the source label is explained
        assert r.ref.strip() and r.tool.strip() and r.part.strip(), r.id
        assert any(r.figure(f) is not None for f in FIGURES), r.id
        assert r.chains and all(r.chains), r.id
    assert len({r.id for r in rows}) == len(rows)


def test_chain_notation_reads_shapes_and_refuses_unknown_layers():
    specs = parse_chain("in:32x32x3 conv2d:16:3:valid relu maxpool2d:2 flatten dense:10 softmax")
    assert [s.kind for s in specs] == ["Conv2D", "Activation", "MaxPooling2D", "Flatten", "Dense", "Activation"]
    assert specs[0].output_shape == (30, 30, 16) and specs[2].output_shape == (15, 15, 16)
    assert specs[3].output_shape == (3600,) and specs[4].fan_in == 3600
    with pytest.raises(UserError, match="unknown layer 'lstm:4'"):
        parse_chain("in:8 lstm:4")


def test_fifo_model_counts_the_published_fifo_brams():
    """The SVHN CNN's report: 96 BRAM18 in channel FIFOs (16 lanes each for its six streams 36 deep or more),
    100 with the softmax tables; the whole model's BRAM from the layers alone, no figure given to it."""
    (row,) = [r for r in load_rows() if r.id == "svhn-cnn"]
    pred = am.predict_row(row)
    assert pred["bram"] == row.figure("bram") == 100
    (fifos,) = [r for r in load_rows() if r.id == "svhn-fifos"]
    assert am.predict_row(fifos)["bram"] == 96


def test_analytic_ranges_hold_most_published_figures_out_of_sample():
    preds = accuracy.analytic_predictions()
    scores = accuracy.score(preds)
    for fig in ("lut", "dsp", "bram", "cycles"):
        s = scores[fig]
        assert s.n >= 10, fig
        assert s.covered / s.n >= 0.75, (fig, s.covered, s.n)
    spread = analytic_spread()
    for fig, (lo, hi) in spread.items():
        assert lo <= 1.0 <= hi, fig
    # the spread is the extreme leave-one-out ratio: a row at that extreme exists
    ratios = loo_ratios()
    assert max(r for _, r in ratios["lut"]) == pytest.approx(spread["lut"][1])


def test_committed_estimator_choice_is_what_the_set_measures():
    committed = json.loads(CHOICE.read_text())
    assert committed["rows"] == len(load_rows()), "the set changed: run benchmarks/calibration.py --write-choice"
    now = accuracy.kind_errors(accuracy.analytic_predictions())
    for kind, err in now.items():
        was = committed["kind_errors"]["analytic"][kind]
        assert (was is None and err is None) or was == pytest.approx(err, rel=1e-9, abs=1e-12), kind
    assert committed["choice"] == accuracy.choose(committed["kind_errors"])


def test_latency_strategy_luts_do_not_fall_with_reuse_as_published():
    """The jet-tagging reuse scan: Latency-strategy LUTs stay about 100k from reuse 1 to 256 while DSPs fall
    as 1/reuse; the analytic model says the same, so the planner raises reuse with Resource for LUTs."""
    layers = parse_chain("in:16 dense:64 relu dense:32 relu dense:32 relu dense:5 softmax")
    lo = analytic_estimate(layers, HlsConfig(reuse_factor=1, strategy="Latency", io_type="io_parallel", balance=False), wrapper=False)
    hi = analytic_estimate(layers, HlsConfig(reuse_factor=256, strategy="Latency", io_type="io_parallel", balance=False), wrapper=False)
    assert hi.lut == pytest.approx(lo.lut, rel=0.01)
    assert hi.dsp < lo.dsp / 100
    res = analytic_estimate(layers, HlsConfig(reuse_factor=256, strategy="Resource", io_type="io_parallel", balance=False), wrapper=False)
    assert res.lut < hi.lut / 4 and res.extrapolated  # no published Resource-strategy figure: said so
