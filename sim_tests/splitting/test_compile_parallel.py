"""The cold path's scheduling (splitting.hls.compile_projects, issue 21): the whole model's build runs beside
the partitions' builds, the largest project starts first, identical projects share one build, a second call
builds nothing. hls4ml's conversion and g++ are replaced by a stand-in that sleeps and writes a file (the real
compiles are checked by test_verify_hls.py and test_graphs.py; here only the order and overlap of builds)."""
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from splitting import hls

BUILD_S = 0.4


def _keras_file(path: Path, units: int) -> Path:
    import keras

    inp = keras.Input((8,), name="x")
    keras.Model(inp, keras.layers.Dense(units, name="d")(inp)).save(path)
    return path


@pytest.fixture
def stand_in(monkeypatch):
    """hls._convert_model (hls4ml's conversion of the checked model) replaced: its `compile` sleeps BUILD_S
    (outside the GIL, as g++ in a child process does) and records (project, start, end)."""
    builds, lock = [], threading.Lock()

    def convert(model, hls_cfg, hls_defaults, out, project, what=None):
        def compile_(hm):
            t0 = time.perf_counter()
            time.sleep(BUILD_S)
            lib = Path(out) / f"{project}.so"
            lib.parent.mkdir(parents=True, exist_ok=True)
            lib.write_bytes(b"not a library")
            with lock:
                builds.append((project, t0, time.perf_counter()))
            return str(lib)

        return SimpleNamespace(write=lambda: None, get_layers=lambda: [],
                               config=SimpleNamespace(backend=SimpleNamespace(compile=compile_)))

    monkeypatch.setattr(hls, "_convert_model", convert)
    return builds


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"whole": _keras_file(d / "whole.keras", 256), "s0": _keras_file(d / "s0.keras", 4),
            "s1": _keras_file(d / "s1.keras", 5), "s2": _keras_file(d / "s2.keras", 6)}


def _projects(files, names):
    """Projects naming their files' true weights hashes (the build checks them before converting)."""
    from splitting.graph import load_model, weights_sha256

    return [hls.Project(files[n], weights_sha256(load_model(files[n])), {"Model": {}}, {}, "sr_" + n) for n in names]


def test_whole_model_builds_beside_the_partitions(stand_in, keras_files, tmp_path):
    folders = hls.compile_projects(_projects(keras_files, ["s0", "s1", "whole", "s2"]), cache=tmp_path, workers=2)
    assert len(folders) == 4 and all((f / hls.ARTIFACT).is_file() for f in folders)
    assert min(stand_in, key=lambda b: b[1])[0] == "sr_whole"  # the largest project starts first
    whole = next(b for b in stand_in if b[0] == "sr_whole")
    beside = [b for b in stand_in if b[0] != "sr_whole" and b[1] < whole[2] and whole[1] < b[2]]
    assert beside, f"no partition built while the whole model was: {stand_in}"
    # four builds of BUILD_S on two workers: about two builds' time, not four
    span = max(b[2] for b in stand_in) - min(b[1] for b in stand_in)
    assert span < 3.5 * BUILD_S, f"builds did not overlap: {span:.2f} s for 4 x {BUILD_S} s"


def test_one_worker_builds_one_at_a_time(stand_in, keras_files, tmp_path):
    hls.compile_projects(_projects(keras_files, ["s0", "whole", "s1"]), cache=tmp_path, workers=1)
    spans = sorted((b[1], b[2]) for b in stand_in)
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_same_content_shares_one_build_and_a_second_call_builds_nothing(stand_in, keras_files, tmp_path):
    same = _projects(keras_files, ["s0", "s0"])
    folders = hls.compile_projects(same, cache=tmp_path, workers=2)
    assert folders[0] == folders[1] and len(stand_in) == 1
    again = hls.compile_projects(_projects(keras_files, ["s0", "s1"]), cache=tmp_path, workers=2)
    assert again[0] == folders[0] and [b[0] for b in stand_in] == ["sr_s0", "sr_s1"]
