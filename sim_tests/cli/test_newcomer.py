"""What a newcomer meets first: one cache per user whatever the working folder, quiet start-up, the demo's
steps numbered once and in order, and `pytest -m hw` refusing to pass without a rack."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env(**kw):
    env = dict(os.environ)
    env.pop("SPLITRACK_CACHE", None)
    env.update(kw)
    return env


# --- one cache per user --------------------------------------------------------------------------------
_WHERE = """
import json
from splitting import hls, reference_models, estimates
from harness.jobs import nightly
from harness.rack import virtual_rack
from harness.cosim import sim
print(json.dumps({"hls": str(hls.CACHE), "models": str(reference_models.CACHE), "estimates": str(estimates.cache_root()),
                  "nightly": str(nightly.CACHE), "cosim": str(sim.CACHE),
                  "racks": str(virtual_rack.default_state("rack.toml"))}))
"""


def _cache_dirs(cwd: Path, env) -> dict:
    import json

    r = subprocess.run([sys.executable, "-c", _WHERE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_cache_is_under_one_user_folder_whatever_the_working_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    # no $SPLITRACK_CACHE: the platform's user cache folder (XDG_CACHE_HOME on Linux), not the working folder
    env = _env(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(REPO))
    da, db = _cache_dirs(a, env), _cache_dirs(b, env)
    # the same folders from either working folder (a rack's state is keyed by its rack file's full path)
    assert {k: v for k, v in da.items() if k != "racks"} == {k: v for k, v in db.items() if k != "racks"}
    for name, d in da.items():
        assert Path(d).is_relative_to(tmp_path / "xdg" / "splitrack"), (name, d)
    # $SPLITRACK_CACHE overrides, for every cache alike
    env = _env(SPLITRACK_CACHE=str(tmp_path / "mine"), PYTHONPATH=str(REPO))
    for name, d in _cache_dirs(a, env).items():
        assert Path(d).is_relative_to(tmp_path / "mine"), (name, d)


def test_no_code_builds_a_cache_folder_of_its_own():
    offenders = [str(p.relative_to(REPO)) for folder in ("splitting", "harness", "benchmarks", "sim_tests")
                 for p in (REPO / folder).rglob("*.py")
                 if p.name != "test_newcomer.py" and '".splitrack-cache' in p.read_text()]
    assert offenders == []


def test_cache_command_shows_and_cleans(tmp_path, monkeypatch, capsys):
    from harness.cli.commands import main

    root = tmp_path / "cache"
    (root / "hls" / "p").mkdir(parents=True)
    (root / "hls" / "p" / "lib.so").write_bytes(b"x" * 3000)
    (root / "racks" / "r").mkdir(parents=True)
    (root / "racks" / "r" / "rack.json").write_text("{}")
    monkeypatch.setenv("SPLITRACK_CACHE", str(root))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and re.search(r"hls\s+2\.9 KiB", out) and "racks" in out
    assert main(["cache", "clean"]) == 0
    assert "freed 2.9 KiB" in capsys.readouterr().out
    assert not (root / "hls").exists() and (root / "racks" / "r" / "rack.json").exists()  # a rack's keys stay
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and str(root) in capsys.readouterr().out


# --- quiet by default ----------------------------------------------------------------------------------
NOISE = ("oneDNN custom operations", "Could not find cuda drivers", "absl::InitializeLog")


def test_tensorflow_start_up_lines_only_with_v(tmp_path):
    import keras

    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    m.save(tmp_path / "m.keras")
    env = _env(PYTHONPATH=str(REPO), SPLITRACK_CACHE=str(tmp_path / "cache"))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    runs = {}
    for flag in ([], ["-v"]):
        out = tmp_path / f"plan{len(flag)}"
        r = subprocess.run([sys.executable, "-m", "harness.cli.commands", *flag, "split", str(tmp_path / "m.keras"), "--at", "a",
                            "-o", str(out)], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        runs[bool(flag)] = r.stdout + r.stderr
    assert not any(n in runs[False] for n in NOISE), runs[False]
    assert any(n in runs[True] for n in NOISE)  # they exist: -v shows them, so the quiet run really hid them
    assert "plan " in runs[False] and "written to" in runs[False]


def test_keras_input_structure_warning_is_filtered():
    code = ("import warnings, numpy as np\n"
            "{quiet}\n"
            "import keras\n"
            "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
            "f = keras.Model(m.inputs[0], m.outputs[0])  # one input, called with a list: how partitions run\n"
            "f.predict([np.zeros((1, 3))], verbose=0)\n")
    seen = {}
    for quiet in (True, False):
        q = "from splitting.quiet_tensorflow import quiet; quiet()" if quiet else "pass"
        r = subprocess.run([sys.executable, "-c", code.format(quiet=q)], capture_output=True, text=True, timeout=300,
                           cwd=REPO, env=_env(PYTHONPATH=str(REPO)))
        assert r.returncode == 0, r.stderr
        seen[quiet] = "structure of `inputs`" in r.stderr
    assert seen == {True: False, False: True}


# --- the demo's steps ----------------------------------------------------------------------------------
def test_demo_steps_are_numbered_once_in_order(monkeypatch, tmp_path, capsys):
    import numpy as np

    import harness.cli.commands
    import splitting.reference_models
    import splitting.split
    import splitting.verify
    from harness.jobs import demo
    from splitting.plan import Plan

    class Model:
        def predict(self, x, verbose=0):
            return np.zeros((len(x), 10))

        def count_params(self):
            return 1

    plan = types.SimpleNamespace(partitions={"s0": 0}, stages=[0])
    monkeypatch.setattr(splitting.reference_models, "reference_model", lambda name, verbose=False: Model())
    monkeypatch.setattr(splitting.split, "split_model", lambda model, **kw: (plan, None))
    monkeypatch.setattr(splitting.split, "write_plan", lambda *a: None)
    monkeypatch.setattr(Plan, "load", staticmethod(lambda folder: plan))
    v = types.SimpleNamespace(ok=True, partitions=1, stages=1, float_max_abs_err=0.0, hls_chain_max_abs_err=0.0,
                              hls_bit_exact=True, accuracy_keras=1.0, accuracy_split_hls=1.0)
    monkeypatch.setattr(splitting.verify, "verify_plan", lambda *a, **kw: v)
    import harness.jobs.bench
    import harness.jobs.run
    import harness.rack.rackfile
    import harness.rack.virtual_rack

    calls = []

    def record(name, result=None):
        return lambda *a, **kw: calls.append(name) or result

    monkeypatch.setattr(harness.rack.virtual_rack, "rack_up", record("rack up"))
    monkeypatch.setattr(harness.rack.virtual_rack, "rack_down", record("rack down", 5))
    monkeypatch.setattr(harness.rack.rackfile, "load_rack", record("load rack"))
    monkeypatch.setattr(harness.jobs.run, "load_data",
                        record("load data", types.SimpleNamespace(x=np.zeros((1, 8, 8, 1)), y=None)))
    monkeypatch.setattr(harness.jobs.run, "run_on_rack", record("run"))
    monkeypatch.setattr(harness.jobs.bench, "bench", record("bench", {}))
    monkeypatch.setattr(harness.jobs.bench, "format_bench", record("format", ""))
    monkeypatch.setattr(harness.jobs.bench, "save", record("save", tmp_path / "bench.png"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "demo-rack.toml").write_text("not a rack left over")  # an interrupted demo's file
    for no_rack, total in ((False, 5), (True, 3)):
        assert demo.demo(tmp_path / "plans", samples=10, boards=None, rack=not no_rack, frames=5) == 0
        steps = re.findall(r"\[(\d+)/(\d+)\]", capsys.readouterr().out)
        assert steps == [(str(i), str(total)) for i in range(1, total + 1)]
    # the leftover rack file is stopped first, then the demo's own rack goes up, runs, benches and comes down
    assert [c for c in calls if c in ("rack up", "run", "bench", "rack down")] == \
        ["rack down", "rack up", "run", "bench", "rack down"]


# --- pytest -m hw needs a rack ----------------------------------------------------------------------------
def _pytest(tmp_path, *args):
    (tmp_path / "test_hwx.py").write_text("import pytest\n\n@pytest.mark.hw\ndef test_needs_rack(rack):\n    pass\n\n"
                                          "def test_plain():\n    pass\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, "test_hwx.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_pytest_m_hw_without_boards_is_a_usage_error(tmp_path):
    r = _pytest(tmp_path, "-m", "hw")
    assert r.returncode == 4  # pytest's usage error: a CI job that forgot --boards goes red
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "-m hw needs a rack" in lines[0] and "--allow-no-boards" in lines[0]
    r = _pytest(tmp_path, "-m", "hw and not slow")
    assert r.returncode == 4


def test_allow_no_boards_and_plain_runs_skip_with_the_reason(tmp_path):
    r = _pytest(tmp_path, "-m", "hw", "--allow-no-boards")
    assert r.returncode == 0 and "1 skipped" in r.stdout and "no rack given" in r.stdout
    r = _pytest(tmp_path)
    assert r.returncode == 0 and "1 passed, 1 skipped" in r.stdout
    assert "hw test(s) skipped: no rack given" in r.stdout
    r = _pytest(tmp_path, "-m", "not hw")
    assert r.returncode == 0 and "1 passed" in r.stdout
