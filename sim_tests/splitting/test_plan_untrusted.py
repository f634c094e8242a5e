"""A plan folder is untrusted input: its files are read with bounds, its plan.json is checked field by field
where it enters, and a model swapped under an unchanged plan.json is refused before anything is built or
cached. Each test sets up the attack or the fault and asserts the refusal (one line, the right cause)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from identity_plan import identity_plan
from splitting import untrusted
from splitting.errors import UserError
from splitting.plan import Plan, PlanError

REPO = Path(__file__).resolve().parents[2]


def _saved(tmp_path, stages=2) -> Path:
    plan = identity_plan(stages, shape=(8,))
    plan.save(tmp_path / "plan")
    return tmp_path / "plan"


def _rehash(d: dict) -> dict:
    """plan.json `d` with the hash a plan of its content would have (what an attacker can always compute)."""
    body = {k: v for k, v in d.items() if k != "hash"}
    d["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    return d


# --- plan.json shapes with a valid hash ---------------------------------------------------------------------
def _set(path):
    def edit(d, value):
        *head, last = path
        node = d
        for k in head:
            node = node[k]
        node[last] = value
    return edit


SHAPES = [  # (what, edit, value, the field the message must name)
    ("stages[0].partitions = null", _set(["stages", 0, "partitions"]), None, "stages[0].partitions"),
    ("links = 'x'", _set(["links"]), "x", "links"),
    ("stages = {}", _set(["stages"]), {}, "stages"),
    ("partitions[0] = 3", _set(["partitions", 0]), 3, "partitions"),
    ("partitions[0].input_shape = [-1]", _set(["partitions", 0, "input_shape"]), [-1], "partitions[0].input_shape"),
    ("partitions[0].hls = []", _set(["partitions", 0, "hls"]), [], "partitions[0].hls"),
    ("links[0].shape = [1e9, 1e9]", _set(["links", 0, "shape"]), [10 ** 9, 10 ** 9], "links[0].shape"),
    ("links[0].data_width = 0", _set(["links", 0, "data_width"]), 0, "links[0].data_width"),
    ("links[0].select = {start: 5, stop: 2}", _set(["links", 0, "select"]), {"axis": 0, "start": 5, "stop": 2},
     "links[0].select"),
    ("model.input_shape = 'x'", _set(["model", "input_shape"]), "x", "model.input_shape"),
    ("partitions[1].stage = 7", _set(["partitions", 1, "stage"]), 7, "stage"),
    ("stages[0].index = true", _set(["stages", 0, "index"]), True, "stages[0].index"),
]


@pytest.mark.parametrize("what,edit,value,field", SHAPES, ids=[s[0] for s in SHAPES])
def test_a_plan_json_of_a_bad_shape_with_a_valid_hash_is_refused_naming_the_field(tmp_path, what, edit, value, field):
    folder = _saved(tmp_path)
    f = folder / "plan.json"
    d = json.loads(f.read_text())
    d.setdefault("model", {}).setdefault("input_shape", [8])
    d["model"].setdefault("output_shape", [8])
    edit(d, value)
    f.write_text(json.dumps(_rehash(d)))
    with pytest.raises(PlanError) as e:
        Plan.load(folder)
    msg = str(e.value)
    assert "\n" not in msg and field in msg, msg


def test_a_duplicate_partition_is_refused(tmp_path):
    folder = _saved(tmp_path)
    f = folder / "plan.json"
    d = json.loads(f.read_text())
    d["partitions"].append(dict(d["partitions"][0]))
    f.write_text(json.dumps(_rehash(d)))
    with pytest.raises(PlanError, match="name of an earlier partition"):
        Plan.load(folder)


@pytest.mark.parametrize("name", ["host", "HOST"])
def test_host_is_not_a_partition_name(tmp_path, name):
    folder = _saved(tmp_path)
    f = folder / "plan.json"
    d = json.loads(f.read_text())
    for p in d["partitions"]:
        if p["name"] == "s1":
            p["name"] = name
    for s in d["stages"]:
        s["partitions"] = [name if n == "s1" else n for n in s["partitions"]]
    for c in d["links"]:
        for k in ("src", "dst"):
            c[k] = name if c[k] == "s1" else c[k]
    f.write_text(json.dumps(_rehash(d)))
    with pytest.raises(PlanError, match="what links call the host"):
        Plan.load(folder)


@pytest.mark.parametrize("depth", [100_000, 70])
def test_plan_json_nested_deep_is_one_line(tmp_path, depth):
    folder = _saved(tmp_path)
    (folder / "plan.json").write_text("[" * depth + "]" * depth)
    with pytest.raises(PlanError, match="nested more than"):
        Plan.load(folder)


def test_plan_json_that_is_not_utf8_is_one_line(tmp_path):
    folder = _saved(tmp_path)
    (folder / "plan.json").write_bytes(b'{"format": 1, "x": "\xff\xfe"}')
    with pytest.raises(PlanError, match="not UTF-8"):
        Plan.load(folder)


def test_cli_gives_one_line_and_exit_2_for_a_plan_with_null_partitions(tmp_path):
    folder = _saved(tmp_path)
    f = folder / "plan.json"
    d = json.loads(f.read_text())
    d["stages"][0]["partitions"] = None
    f.write_text(json.dumps(_rehash(d)))
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "run", str(folder), "--local"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "stages[0].partitions" in r.stderr and "Traceback" not in r.stderr


# --- files that exhaust or hang the host -----------------------------------------------------------------
def _fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _zero(path: Path) -> Path:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("make", [_fifo, _zero], ids=["fifo", "dev-zero"])
def test_plan_json_fifo_or_dev_zero_is_refused_at_once(tmp_path, make):
    folder = _saved(tmp_path)
    make(folder / "plan.json")
    t0 = time.monotonic()
    with pytest.raises(PlanError, match="not a regular file"):
        Plan.load(folder)
    assert time.monotonic() - t0 < 30  # "at once": a blocking read would hang here until pytest's timeout


CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: reading /dev/zero would exceed it
from splitting import hls
from splitting.errors import UserError
from splitting.plan import Plan
plan = Plan.load(sys.argv[1])
t0 = time.monotonic()
try:
    hls.project_dir(plan, "s0")
    print("BUILT")
except UserError as e:
    print("REFUSED %.3f %s" % (time.monotonic() - t0, e))
"""


@pytest.mark.parametrize("make", [_fifo, _zero], ids=["fifo", "dev-zero"])
def test_a_partition_model_that_is_dev_zero_or_a_fifo_is_refused_under_a_memory_limit(tmp_path, make):
    folder = _saved(tmp_path)
    (folder / "s0").mkdir(exist_ok=True)
    make(folder / "s0" / "model.keras")
    r = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, cwd=REPO,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    out = r.stdout.strip()
    assert r.returncode == 0 and out.startswith("REFUSED"), r.stdout + r.stderr
    assert "not a regular file" in out and "model.keras" in out


def test_a_partition_folder_linked_outside_the_plan_is_refused(tmp_path):
    folder = _saved(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    shutil.rmtree(folder / "s0", ignore_errors=True)
    (folder / "s0").symlink_to(outside)
    plan = Plan.load(folder)
    with pytest.raises(PlanError, match="outside"):
        plan.file("s0/model.keras")


def test_a_model_file_that_is_not_a_zip_is_one_line(tmp_path):
    from splitting import hls

    folder = _saved(tmp_path)
    (folder / "s0").mkdir(exist_ok=True)
    (folder / "s0" / "model.keras").write_text("not a model\n")
    with pytest.raises(UserError, match="is not a Keras model file") as e:
        hls.project_dir(Plan.load(folder), "s0")
    assert "\n" not in str(e.value)


def test_cosim_json_nested_deep_or_a_fifo_is_a_reason_not_a_crash(tmp_path):
    from harness.cosim import record

    folder = _saved(tmp_path)
    plan = Plan.load(folder)
    (folder / record.FILE).write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    got = record.read(plan)
    assert not got.figures and "nested more than" in got.missing
    _fifo(folder / record.FILE)
    got = record.read(plan)
    assert not got.figures and "not a regular file" in got.missing


def test_untrusted_read_stops_at_its_limit(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 1000)
    assert untrusted.read_bytes(f, 1000) == b"x" * 1000
    with pytest.raises(UserError, match="more than the 999"):
        untrusted.read_bytes(f, 999)


# --- a swapped model under an unchanged plan.json ---------------------------------------------------------
def test_a_swapped_partition_model_is_refused_and_never_poisons_the_cache(fc_plan, tmp_path):
    """The issue's attack: a copy of a plan with one partition's weights negated (plan.json untouched). The
    copy is refused before anything is built; the cache gets no entry for it; the original still builds
    from its own bytes (its entry records them)."""
    import keras

    from splitting import hls

    name = fc_plan.ordered_partitions()[-1].name
    copy = tmp_path / "copy"
    shutil.copytree(fc_plan.root, copy)
    f = copy / name / "model.keras"
    m = keras.models.load_model(f, compile=False)
    m.set_weights([-w for w in m.get_weights()])
    m.save(f)
    swapped = Plan.load(copy)  # plan.json is untouched: it loads
    assert swapped.hash == fc_plan.hash
    p = swapped.partition(name)
    key = hls.cache_key(f, p.weights_sha256, p.hls, swapped.hls_defaults)
    assert key != hls.cache_key(fc_plan.path(p.model_file), p.weights_sha256, p.hls, fc_plan.hls_defaults)
    with pytest.raises(UserError, match="are not the ones the plan names") as e:
        hls.project_dir(swapped, name)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    assert not (hls.CACHE / key).exists()  # nothing of it stays in the cache
    folder = hls.project_dir(fc_plan, name)  # the original: its own build, of its own content
    original = (fc_plan.root / name / "model.keras").read_bytes()
    built = (folder / hls.KERAS_COPY).read_bytes()  # (another save of the same model: only its date may differ)
    assert hls._model_content(built, "entry") == hls._model_content(original, "original")
    assert hls._model_content(built, "entry") != hls._model_content(f.read_bytes(), "swapped")
    x = np.random.default_rng(0).uniform(-1, 1, (4,) + tuple(p.input_shape)).astype(np.float32)
    keras_out = keras.models.load_model(fc_plan.root / name / "model.keras", compile=False).predict(x, verbose=0)
    emu = hls.load_emulation(folder).predict(x)
    assert np.max(np.abs(emu - keras_out)) < 0.1  # the original's weights, not the negated ones
