"""verify's cold path (issue 21): the hls4ml builds start first and return at once (hls.start_projects), each
model's emulation starts as soon as its own library is built and the partitions it reads from have run
(splitting.emulation_schedule), the batch cut into slices run side by side. What must hold whatever the
schedule: the sliced runs give exactly the outputs and layer traces of one run over the whole batch, and a
failed build fails the partitions that read from it, never hangs. Speed is measured by
benchmarks/cold_verify.py, not here."""
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import SimpleNamespace

import numpy as np
import pytest

from splitting import hls
from splitting.chain import emulation_runner, run_chain
from splitting.diagnose import traced_run
from splitting.emulation_schedule import EmulationSchedule
from splitting.hls_errors import HlsUnsupported


def _stand_in(compile_):
    """An hls4ml ModelGraph stand-in whose backend's compile is `compile_(hm)` (no g++: the schedule is tested)."""
    return SimpleNamespace(write=lambda: None, get_layers=lambda: [],
                           config=SimpleNamespace(backend=SimpleNamespace(compile=compile_)))


def _library(out, project):
    """compile_'s stand-in work: a library file where hls4ml would write it."""
    lib = out / f"{project}.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(b"stand-in")
    return str(lib)


@pytest.fixture(scope="module")
def built(skip_plan):
    """The skip plan's projects compiled (cached), and its names: None (the whole model), then partitions."""
    hls.compile_plan(skip_plan, progress=lambda m: None)
    return skip_plan, [None] + [p.name for p in skip_plan.ordered_partitions()]


def _x(n=11):
    return np.random.default_rng(5).uniform(-2, 2, (n, 4, 4, 2)).astype(np.float32)


def _done(folder=None):
    f = Future()
    f.set_result(folder)
    return f


@pytest.mark.parametrize("chunks", [1, 3, 11])
def test_sliced_emulations_equal_one_run_over_the_batch(built, chunks):
    plan, names = built
    x = _x()
    sched = EmulationSchedule(plan, x, {k: _done() for k in names}, workers=2, chunks=chunks)
    try:
        whole = sched.result(None, timeout=600)
        one = traced_run(plan, None, x)
        assert np.array_equal(whole.out, one.out) and np.array_equal(whole.batch, one.batch)
        assert whole.trace.keys() == one.trace.keys() and all(np.array_equal(whole.trace[k], one.trace[k]) for k in one.trace)
        # every partition got what the chain of emulations gives it (multi-input, the host's skip link) and
        # traced exactly what one run of it on that input traces
        kept = {}
        run_chain(plan, x, emulation_runner(plan, isolated=True), keep=kept)
        for p in plan.ordered_partitions():
            got = sched.result(p.name, timeout=600)
            assert np.array_equal(got.out.reshape(len(x), -1), kept[p.name].reshape(len(x), -1)), p.name
            ref = traced_run(plan, p.name, got.batch)
            assert all(np.array_equal(got.trace[k], ref.trace[k]) for k in ref.trace), p.name
        assert sched.started(None) == min(chunks, len(x))
    finally:
        sched.close()


def test_each_emulation_starts_when_its_build_and_its_inputs_are_there(built):
    plan, names = built
    ready = {k: Future() for k in names}
    sched = EmulationSchedule(plan, _x(), ready, workers=2, chunks=2)
    try:
        ready[None].set_result(None)
        ready["s1"].set_result(None)  # built, but what it reads (s0) is not
        assert sched.result(None, timeout=600).out.shape[0] == 11  # the whole model ran while s0 "compiles"
        assert sched.started("s0") == sched.started("s1") == 0
        ready["s0"].set_result(None)
        assert sched.result("s1", timeout=600) is not None  # s0's slices ran, then s1's
        with pytest.raises(FutureTimeout):
            sched.result("s2", timeout=0.5)  # s2 reads s1 and the host, but is not built
        assert sched.started("s2") == 0
        ready["s2"].set_result(None)
        assert sched.result("s2", timeout=600).out.shape[0] == 11
    finally:
        sched.close()


def test_a_failed_build_fails_the_partitions_downstream_and_not_the_whole_model(built):
    plan, names = built
    ready = {k: _done() for k in names if k != "s1"}
    ready["s1"] = Future()
    sched = EmulationSchedule(plan, _x(), ready, workers=2)
    try:
        ready["s1"].set_exception(HlsUnsupported("partition s1: hls4ml cannot compile layer c"))
        for name in ("s1", "s2"):  # s2 reads s1
            with pytest.raises(HlsUnsupported, match="partition s1"):
                sched.result(name, timeout=600)
        assert sched.result("s0", timeout=600) is not None and sched.result(None, timeout=600) is not None
    finally:
        sched.close()


def test_builds_start_and_return_before_they_end(monkeypatch, tmp_path):
    """hls.start_projects returns once every project is converted, while g++ still runs; each ready future
    resolves when its own build ends; wait() returns the folders of compile_projects."""
    import keras
    from splitting.graph import weights_sha256

    gate = {n: threading.Event() for n in ("sr_a", "sr_b")}

    def convert(model, hls_cfg, hls_defaults, out, project, what=None):
        def compile_(hm):
            assert gate[project].wait(60)
            return _library(out, project)

        return _stand_in(compile_)

    monkeypatch.setattr(hls, "_convert_model", convert)
    projects = []
    for name, units in (("sr_a", 3), ("sr_b", 5)):
        inp = keras.Input((4,))
        m = keras.Model(inp, keras.layers.Dense(units)(inp))
        m.save(tmp_path / f"{name}.keras")
        projects.append(hls.Project(tmp_path / f"{name}.keras", weights_sha256(m), {"Model": {}}, {}, name))
    builds = hls.start_projects(projects, cache=tmp_path / "cache", workers=2, progress=lambda m: None)
    try:
        assert not any(f.done() for f in builds.ready)  # both converted, neither built
        gate["sr_b"].set()
        assert builds.ready[1].result(60) == builds.folders[1] and not builds.ready[0].done()
        gate["sr_a"].set()
        assert builds.wait() == builds.folders and all((f / hls.ARTIFACT).is_file() for f in builds.folders)
        assert hls.compile_projects(projects, cache=tmp_path / "cache") == builds.folders  # cached now
    finally:
        for g in gate.values():
            g.set()
        builds.close()


def test_a_failed_build_is_raised_by_wait_and_resolves_its_ready_future(monkeypatch, tmp_path):
    import keras
    from splitting.graph import weights_sha256

    def convert(model, hls_cfg, hls_defaults, out, project, what=None):
        def compile_(hm):
            raise RuntimeError("g++: internal compiler error")

        return _stand_in(compile_)

    monkeypatch.setattr(hls, "_convert_model", convert)
    inp = keras.Input((4,))
    m = keras.Model(inp, keras.layers.Dense(2)(inp))
    m.save(tmp_path / "m.keras")
    builds = hls.start_projects([hls.Project(tmp_path / "m.keras", weights_sha256(m), {"Model": {}}, {}, "sr_m")],
                                cache=tmp_path / "cache", progress=lambda m: None)
    with pytest.raises(HlsUnsupported):
        builds.ready[0].result(60)
    with pytest.raises(HlsUnsupported):
        builds.wait()
    assert not (builds.folders[0] / hls.ARTIFACT).exists()
    with pytest.raises(HlsUnsupported):
        hls.compile_projects([hls.Project(tmp_path / "m.keras", weights_sha256(m), {"Model": {}}, {}, "sr_m")],
                             cache=tmp_path / "cache", progress=lambda m: None)


@pytest.mark.parametrize("fails", [False, True])
def test_a_project_another_process_left_unbuilt_is_built_here(fails, monkeypatch, tmp_path):
    """Another process holds a project's lock (it is building it) and ends without a library (its build failed,
    or it died): wait() builds it here, so the command gets the library or its own one-line error, never a
    folder without artifact.json (the shared cache: two commands converting one model at once)."""
    import keras
    from filelock import FileLock

    from splitting.graph import weights_sha256

    def convert(model, hls_cfg, hls_defaults, out, project, what=None):
        if fails:
            raise HlsUnsupported("partition m: hls4ml cannot convert layer 'sep' (SeparableConv2D)")

        return _stand_in(lambda hm: _library(out, project))

    monkeypatch.setattr(hls, "_convert_model", convert)
    inp = keras.Input((4,))
    m = keras.Model(inp, keras.layers.Dense(2)(inp))
    m.save(tmp_path / "m.keras")
    project = hls.Project(tmp_path / "m.keras", weights_sha256(m), {"Model": {}}, {}, "sr_m")
    cache = tmp_path / "cache"
    cache.mkdir()
    other = FileLock(str(cache / f"{hls.cache_key(tmp_path / 'm.keras', project.weights_sha, {'Model': {}}, {})}.lock"))
    other.acquire()
    builds = hls.start_projects([project], cache=cache, progress=lambda m: None)
    assert not builds.ready[0].done()  # the other process is building it
    other.release()  # ... and leaves no library
    if fails:
        with pytest.raises(HlsUnsupported, match="SeparableConv2D"):
            builds.wait()
        with pytest.raises(HlsUnsupported):
            builds.ready[0].result(0)
    else:
        assert builds.wait() == builds.folders and (builds.folders[0] / hls.ARTIFACT).is_file()
        assert builds.ready[0].result(0) == builds.folders[0]
