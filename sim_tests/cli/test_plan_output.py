"""`splitrack plan`'s figures agree with themselves: every point lies inside its range as printed (ranges rounded
outward), the table, --json and plan.json carry the same figures, and the "beyond the published figures" note
names exactly the figures whose range was widened to at least x0.5-x2 (and those are). Analytic estimates: fast."""
import json
import random
import re

import pytest

from harness.cli.commands import main
from harness.cli.plan import down, up
from splitting import analytic_model as am
from splitting.reuse import layer_reuse
from splitting.intervals import EXTRAPOLATED, analytic_spread, analytic_estimate, widened_figures
from splitting.layerspec import HlsConfig, load_layers

CELL = re.compile(r"(-?[\d.]+) \[(-?[\d.]+)-(-?[\d.]+)\]")
UTIL = ("lut", "ff", "dsp", "bram")


def _reference(name):
    from splitting.reference_models import _architecture

    return _architecture(name)


def test_outward_rounding_keeps_the_rounded_point_inside_for_any_values():
    rng = random.Random(7)
    for _ in range(20000):
        lo, p, hi = sorted(rng.choice([rng.uniform(0, 2), rng.uniform(0, 1e5), round(rng.uniform(0, 50), rng.randint(0, 4))])
                           for _ in range(3))
        for d in range(0, 5):
            assert down(lo, d) <= round(p, d) <= up(hi, d), (lo, p, hi, d)
            assert down(lo, d) <= lo + 1e-9 and up(hi, d) >= hi - 1e-9


@pytest.mark.parametrize("name", ["cnn", "fc"])
def test_table_json_and_plan_json_agree_and_every_point_is_inside_its_printed_range(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    _reference(name).save(tmp_path / "m.keras")
    assert main(["plan", str(tmp_path / "m.keras"), "-o", str(tmp_path / "plan")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert main(["plan", str(tmp_path / "m.keras"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())

    # the summary line: latency (us) and interval (cycles), each inside its printed range, and the clock
    m = re.search(r"latency ([\d.]+) us \[([\d.]+)-([\d.]+)\], interval ([\d.]+) cycles \[([\d.]+)-([\d.]+)\] at 100 MHz", table[0])
    assert m, table[0]
    head = [m.groups()[:3], m.groups()[3:]]
    for (p, lo, hi), key in zip(head, ("latency_us", "interval_cycles")):
        assert float(lo) <= float(p) <= float(hi), table[0]
        assert (float(p), float(lo), float(hi)) == (report[key], report["range"]["low"][key], report["range"]["high"][key])
    assert report["clock_mhz"] == 1000.0 / plan["hls_defaults"]["clock_period"]

    rows = {r["name"]: r for r in report["partitions"]}
    printed = {ln.split()[0]: ln for ln in table if ln.split() and ln.split()[0] in rows}
    assert set(printed) == set(rows)
    for pname, ln in printed.items():
        r = rows[pname]
        cells = CELL.findall(ln)
        assert len(cells) == 6, ln  # LUT, FF, DSP, BRAM18 %, latency and interval cycles
        for (p, lo, hi) in cells:
            assert float(lo) <= float(p) <= float(hi), (pname, p, lo, hi)
        for (p, lo, hi), k in zip(cells[:4], UTIL):  # the printed % are the reported fractions, digit for digit
            assert float(p) == pytest.approx(100 * r["utilization"][k], abs=1e-9)
            assert float(lo) == pytest.approx(100 * r["utilization_low"][k], abs=1e-9)
            assert float(hi) == pytest.approx(100 * r["utilization_high"][k], abs=1e-9)
        for (p, lo, hi), (k, f) in zip(cells[4:], (("cycles", "cycles"), ("interval_cycles", "interval"))):
            assert (float(p), float(lo), float(hi)) == (r[k], r["range"]["low"][f], r["range"]["high"][f])
        for k in UTIL:  # inside in every unit the JSON gives
            assert r["utilization_low"][k] <= r["utilization"][k] <= r["utilization_high"][k]
            assert r["range"]["low"][k] <= r["resources"][k] <= r["range"]["high"][k]
        est = next(p for p in plan["partitions"] if p["name"] == pname)["estimate"]
        for key in ("utilization", "utilization_low", "utilization_high", "resources", "range", "cycles", "interval_cycles",
                    "layer_reuse", "extrapolated"):
            assert est[key] == r[key], (pname, key)
    assert "BRAM18" in "\n".join(table[:6]) and report["units"]["resources"].startswith("LUT, FF, DSP48, BRAM18")


def _specs():
    import keras
    from keras import layers

    m = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(32, 3, activation="relu", name="conv"),
                          layers.Flatten(name="flat"), layers.Dense(600, activation="relu", name="big"),
                          layers.Dense(10, name="small")])
    return {s.name: s for s in load_layers(m)[1]}


@pytest.mark.parametrize("layer,cfg", [
    ("small", HlsConfig("ap_fixed<16,6>", 1, "Resource")),    # strategy beyond the set: DSP stays calibrated
    ("small", HlsConfig("ap_fixed<8,3>", 1, "Latency")),      # precision beyond the set: every figure
    ("big", HlsConfig("ap_fixed<16,6>", 4, "Latency")),       # more products than any published layer
    ("big", HlsConfig("ap_fixed<16,6>", 1024, "Resource")),   # and a reuse factor beyond the set
    ("conv", HlsConfig("ap_fixed<16,6>", 8, "Latency")),      # no published unpruned convolution
])
def test_the_widened_figures_named_are_the_ones_widened(layer, cfg):
    spec = _specs()[layer]
    est = analytic_estimate((spec,), cfg, wrapper=False)
    assert est.extrapolated, "the case must lie beyond the calibration set"
    claimed = {f for why in est.extrapolated for f in widened_figures(why)}
    assert claimed and all(widened_figures(why) for why in est.extrapolated)
    spread = analytic_spread()
    _, fifo = am.segment((spec,), cfg, layer_reuse((spec,), cfg), wrapper=False)  # its stream's FIFO: calibrated spread
    for f in ("lut", "ff", "dsp", "bram", "cycles", "interval"):
        q = fifo.get(f, 0.0) if f in UTIL else 0.0
        p = est.bound(f) - q
        if p <= 0:
            continue
        lo, hi = (est.bound(f, "low") - q * spread[f][0]) / p, (est.bound(f, "high") - q * spread[f][1]) / p
        if f in claimed:
            assert lo <= EXTRAPOLATED[0] + 1e-9 and hi >= EXTRAPOLATED[1] - 1e-9, (f, lo, hi)
        elif f != "bram":  # (BRAM's upper end is rounded up to whole blocks)
            assert lo == pytest.approx(spread[f][0]) and hi == pytest.approx(spread[f][1]), (f, lo, hi)


def test_the_plan_note_names_the_widened_figures_and_only_those(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    _reference("cnn").save(tmp_path / "cnn.keras")
    assert main(["plan", str(tmp_path / "cnn.keras"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["plan", str(tmp_path / "cnn.keras")]) == 0
    out = capsys.readouterr().out
    for r in report["partitions"]:
        if not r["extrapolated"]:
            continue
        line = next(ln for ln in out.splitlines() if ln.startswith(f"~ {r['name']}:"))
        assert "x0.5-x2" in line and all(why in line for why in r["extrapolated"])
        claimed = {f for why in r["extrapolated"] for f in widened_figures(why)}
        for f in ("dsp", "lut"):
            p, lo, hi = r["resources"][f], r["range"]["low"][f], r["range"]["high"][f]
            if f not in claimed and p:  # a figure the note does not name keeps a range narrower than x0.5-x2
                assert not (lo <= 0.5 * p and hi >= 2 * p), (r["name"], f, p, lo, hi)


def test_too_large_says_as_what_and_at_which_configuration_and_reuse_columns_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLITRACK_CACHE", str(tmp_path / "cache"))
    _reference("cnn").save(tmp_path / "cnn.keras")
    assert main(["plan", str(tmp_path / "cnn.keras"), "--json"]) == 0
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    line = next(ln for ln in cap.err.splitlines() if "split parts" in ln)
    m = re.search(r"(\w+) does not fit one pynq-z2 as a partition of its own at any configuration tried \(least loaded: "
                  r"(\w+) reuse (\d+) \S+, (LUT|FF|DSP|BRAM) (\d+) % at the upper bound, cap 80 %\)", line)
    assert m, line
    layer, pct = m.group(1), int(m.group(5))
    assert pct > 80
    whole = [r for r in report["partitions"] if layer in r["layers"] and r["kind"] == "layers"]
    # the chosen plan keeps it whole in a longer partition: the line must say such a partition fits
    assert bool(whole) == ("with its neighbouring layers does fit" in line)
    assert whole and len(whole[0]["layers"]) > 1
    assert main(["plan", str(tmp_path / "cnn.keras")]) == 0
    out = capsys.readouterr().out
    assert "model RF" in out and "ReuseFactor per layer, as hls4ml is given it" in out
