"""hls4ml conversion of partitions: VivadoAccelerator backend, pynq-z2, io_stream, 100 MHz.

`compile()` builds the bit-accurate emulation library (g++ only). Projects are cached by content hash
under `<cache>/hls/<key>/` (`splitrack cache` shows the folder): a second `verify` of the same plan loads the library without
recompiling. `splitrack build` runs Vivado when it is on PATH; bitstreams cannot be made without it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import os
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Dict

from .emulation import EmulationLib
from .errors import UserError
from .plan import Plan
from .user_cache import cache_root

CACHE = cache_root() / "hls"
ARTIFACT = "artifact.json"
COMPILE_GIB = 2.0  # memory one hls4ml build may take (see default_workers)
_loaded: Dict[str, EmulationLib] = {}  # one ctypes handle per library per process


def _without_object_ids(node):
    """Keras 3 writes `shared_object_id` (a memory address) into config.json: not part of the architecture."""
    if isinstance(node, dict):
        return {k: _without_object_ids(v) for k, v in node.items() if k != "shared_object_id"}
    if isinstance(node, list):
        return [_without_object_ids(v) for v in node]
    return node


def _model_config_sha(keras_file: Path) -> str:
    """Hash of the architecture inside a .keras zip (its config.json); weights are hashed by the plan."""
    with zipfile.ZipFile(keras_file) as z:
        cfg = _without_object_ids(json.loads(z.read("config.json")))
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def cache_key(keras_file: Path, weights_sha: str, hls_cfg: dict, hls_defaults: dict) -> str:
    """The compiled-project cache key of a partition: first 20 hex digits of the SHA-256 of its architecture
    (config.json without object ids), weights hash, hls4ml configuration, backend defaults and the
    installed hls4ml version."""
    body = json.dumps(
        {"arch": _model_config_sha(keras_file), "weights": weights_sha, "hls": hls_cfg, "backend": hls_defaults,
         "hls4ml": version("hls4ml")},
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def _convert(keras_file: Path, hls_cfg: dict, hls_defaults: dict, out: Path, project: str):
    from .graph import load_model

    model = load_model(keras_file)
    return model, _convert_model(model, hls_cfg, hls_defaults, out, project)


def _convert_model(model, hls_cfg: dict, hls_defaults: dict, out: Path, project: str):
    import hls4ml

    cfg = json.loads(json.dumps(hls_cfg))  # hls4ml mutates its config
    if len(model.inputs) > 1 or len(model.outputs) > 1:
        # hls4ml's VivadoAccelerator backend takes one input and one output only (vivado_accelerator_config.py
        # asserts it); its parent Vivado backend writes the same firmware (same nnet templates, same types:
        # the emulation is the same C++) with a top function per input and output stream. On a board such a
        # partition needs a wrapper that splits its one DMA stream into its inputs: `build` refuses it.
        return hls4ml.converters.convert_from_keras_model(
            model, hls_config=cfg, output_dir=str(out), project_name=project, backend="Vivado",
            part=hls_defaults.get("part", "xc7z020clg400-1"), io_type=hls_defaults.get("io_type", "io_stream"),
            clock_period=hls_defaults.get("clock_period", 10), allow_da_fallback=False)
    # no DA fallback: whether it is tried depends on optional packages (da4ml), and where it is it fails
    # for plain Keras layers ("No plugin found for model type from module: keras"); the Keras-2 handlers
    # are the documented fallback for layers without a Keras-3 handler
    return hls4ml.converters.convert_from_keras_model(
        model,
        hls_config=cfg,
        output_dir=str(out),
        project_name=project,
        backend=hls_defaults.get("backend", "VivadoAccelerator"),
        board=hls_defaults.get("board", "pynq-z2"),
        part=hls_defaults.get("part", "xc7z020clg400-1"),
        io_type=hls_defaults.get("io_type", "io_stream"),
        interface=hls_defaults.get("interface", "axi_stream"),
        clock_period=hls_defaults.get("clock_period", 10),
        allow_da_fallback=False,
    )


@dataclass
class Project:
    """One hls4ml project to compile: a Keras file, its weights hash, hls4ml configuration and backend
    settings, and the project name (`sr_whole`, `sr_<partition>`)."""

    keras_file: Path
    weights_sha: str
    hls_cfg: dict
    hls_defaults: dict
    project: str

    @property
    def what(self) -> str:
        """How messages name it: 'the whole model', 'partition s1'."""
        p = self.project
        return "the whole model" if p == "sr_whole" else (f"partition {p[3:]}" if p.startswith("sr_") else p)


def compiled(keras_file: Path, weights_sha: str, hls_cfg: dict, hls_defaults: dict, project: str,
             cache: Path = None) -> Path:
    """The cached hls4ml project folder of a model with its config, compiled if it is not there yet.
    Raises UserError for a project name that is not a plain name (hls4ml's build script hands it to a shell)."""
    return compile_projects([Project(Path(keras_file), weights_sha, hls_cfg, hls_defaults, project)], cache=cache)[0]


def default_workers(n_projects: int) -> int:
    """How many hls4ml builds run at once: one per core, at most one per COMPILE_GIB of available memory
    (g++ -O3 of a large firmware file peaks near 1.5 GiB here), at most one per project, at least one.
    SPLITRACK_COMPILE_JOBS overrides it."""
    env = os.environ.get("SPLITRACK_COMPILE_JOBS", "")
    if env.isdigit() and int(env) > 0:
        return min(int(env), max(1, n_projects))
    avail_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail_gib = int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_mem = int(avail_gib // COMPILE_GIB) if avail_gib is not None else cores
    return max(1, min(cores, by_mem, n_projects))


def compile_projects(projects, cache: Path = None, workers: int = None, progress=None) -> list:
    """The cached project folders of `projects` (a list of Project), compiling those not cached yet.

    The cold path: each project is converted and written by hls4ml in this process, one after another, and
    its C++ is built (hls4ml's build_lib.sh: g++) in a pool of `workers` threads (default_workers) while
    the next is converted; the largest first. A project another process is compiling (its lock is held) is
    waited for. Projects with the same content share one build (the cache key). `progress` gets one line per
    project started and finished. Raises HlsUnsupported naming the project and layer when hls4ml fails."""
    from concurrent.futures import ThreadPoolExecutor

    from filelock import FileLock, Timeout

    from .hls_errors import HlsUnsupported, failure_message
    from .names import name_problem

    say = progress or (lambda m: print(f"  hls4ml: {m}", file=sys.stderr, flush=True))
    cache = Path(cache or CACHE)
    folders, todo, seen = [], [], set()
    for pr in projects:
        if name_problem("hls4ml project", pr.project):
            raise UserError(name_problem("hls4ml project", pr.project))
        key = cache_key(pr.keras_file, pr.weights_sha, pr.hls_cfg, pr.hls_defaults)
        folders.append(cache / key)
        if not (cache / key / ARTIFACT).is_file() and key not in seen:
            seen.add(key)
            todo.append((pr, key))
    if not todo:
        return folders
    cache.mkdir(parents=True, exist_ok=True)
    todo.sort(key=lambda t: -t[0].keras_file.stat().st_size)  # the largest first: it ends last otherwise
    n = len(todo)
    workers = workers or default_workers(n)
    if n > 1:
        say(f"compiling {n} projects, {workers} at a time")
    locks, waiting, futures = [], [], []
    done = [0]

    def build(pr, key, folder, model, hm, t0):
        try:
            lib = hm.config.backend.compile(hm)  # build_lib.sh: g++ in a child process (the GIL is released)
        except Exception as e:
            return HlsUnsupported(failure_message(e, pr.what, doing="compile"))
        ins = [int(_prod(t.shape[1:])) for t in model.inputs]
        outs = [int(_prod(t.shape[1:])) for t in model.outputs]
        libp = Path(lib)
        if not libp.is_file():
            return RuntimeError(f"hls4ml compile of {pr.project} produced no library in {folder}")
        # several inputs/outputs: lists of their sizes (EmulationLib takes either); the library's sha256 from
        # the moment it is built: deploy refuses a cached library damaged later
        meta = {"library": str(libp.relative_to(folder)), "project": pr.project,
                "n_in": ins if len(ins) > 1 else ins[0], "n_out": outs if len(outs) > 1 else outs[0],
                "seconds": round(time.time() - t0, 1), "key": key,
                "library_sha256": hashlib.sha256(libp.read_bytes()).hexdigest()}
        (folder / ARTIFACT).write_text(json.dumps(meta, indent=1))
        done[0] += 1
        say(f"{pr.project} compiled in {meta['seconds']} s" + (f" ({done[0]}/{n})" if n > 1 else ""))
        return None

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for pr, key in todo:
                folder = cache / key
                lock = FileLock(str(cache / f"{key}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:  # another process compiles it: wait for it after ours are under way
                    waiting.append(lock)
                    continue
                locks.append(lock)
                if (folder / ARTIFACT).is_file():
                    continue
                if folder.exists():
                    shutil.rmtree(folder)  # a compile that died half-way
                t0 = time.time()
                say(f"compiling {pr.project} ...")
                try:
                    model, hm = _convert(pr.keras_file, pr.hls_cfg, pr.hls_defaults, folder / "project", pr.project)
                    hm.write()
                except UserError:
                    raise
                except Exception as e:  # hls4ml's own failures: one line naming the layer (never a traceback)
                    raise HlsUnsupported(failure_message(e, pr.what)) from None
                futures.append(pool.submit(build, pr, key, folder, model, hm, t0))
            for f in futures:
                err = f.result()
                if err is not None:
                    raise err
    finally:
        for lock in locks:
            lock.release()
    for lock in waiting:
        with lock:  # the other process finished (or died: then its project is compiled on the next call)
            pass
    return folders


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def load_emulation(folder: Path) -> EmulationLib:
    """The EmulationLib of a compiled project folder (per its artifact.json), loaded once per process.
    Raises OSError when artifact.json or the library cannot be read."""
    meta = json.loads((Path(folder) / ARTIFACT).read_text())
    lib = str(Path(folder) / meta["library"])
    if lib not in _loaded:
        _loaded[lib] = EmulationLib(lib, meta["project"], meta["n_in"], meta["n_out"])
    return _loaded[lib]


def project_dir(plan: Plan, name: str) -> Path:
    """The compiled hls4ml project of one partition (compiling it on first use). The `.so`, its name and
    sizes are in `artifact.json` there; the hls4ml project (firmware, weights) is under `project/`."""
    p = plan.partition(name)
    return compiled(plan.path(p.model_file), p.weights_sha256, p.hls, plan.hls_defaults, f"sr_{name}")


def emulation(plan: Plan, name: str) -> EmulationLib:
    """The hls4ml emulation library of partition `name`, compiling its project on first use (project_dir)."""
    return load_emulation(project_dir(plan, name))


def plan_projects(plan: Plan, whole: bool = True) -> list:
    """The hls4ml Projects of a plan: the whole model (with `whole`) and every partition."""
    out = []
    if whole:
        src = plan.path(plan.model.get("hls_source") or plan.model["source"])
        if not src.is_file():
            raise UserError(f"{src} is missing: the plan folder has no copy of its source model; split again")
        sha = plan.model.get("hls_source_weights_sha256") or plan.model["weights_sha256"]
        out.append(Project(src, sha, monolithic_hls_config(plan), plan.hls_defaults, "sr_whole"))
    for p in plan.ordered_partitions():
        out.append(Project(plan.path(p.model_file), p.weights_sha256, p.hls, plan.hls_defaults, f"sr_{p.name}"))
    return out


def compile_plan(plan: Plan, whole: bool = True, workers: int = None, progress=None) -> list:
    """Compile (or find in the cache) every hls4ml project of a plan in parallel (compile_projects); the
    project folders, whole model first when `whole`."""
    return compile_projects(plan_projects(plan, whole), workers=workers, progress=progress)


def monolithic_hls_config(plan: Plan) -> dict:
    """The hls4ml configuration of the whole model: the plan's precision, reuse factor and strategy;
    BramFactor 10^9 (above every layer's weight count: hls4ml moves no weights out to
    BRAM ports) and no trace output."""
    m = plan.model
    return {"Model": {"Precision": {"default": m["precision"]}, "ReuseFactor": m.get("reuse_factor", 1),
                      "Strategy": m.get("strategy", "Latency"), "BramFactor": 1000000000, "TraceOutput": False}}


def monolithic_emulation(plan: Plan) -> EmulationLib:
    """The hls4ml emulation of the whole (unsplit) model, with the plan's precision and reuse factor (of the
    model with its BatchNormalization folded, `hls_source`, when the plan folded any)."""
    src = plan.path(plan.model.get("hls_source") or plan.model["source"])
    if not src.is_file():
        raise UserError(f"{src} is missing: the plan folder has no copy of its source model; split again")
    sha = plan.model.get("hls_source_weights_sha256") or plan.model["weights_sha256"]
    folder = compiled(src, sha, monolithic_hls_config(plan), plan.hls_defaults, "sr_whole")
    return load_emulation(folder)


def vivado_path() -> str:
    """The `vivado` executable on PATH; UserError (with what to do instead) when there is none."""
    vivado = shutil.which("vivado")
    if not vivado:
        raise UserError(
            "bitstreams need Vivado, and `vivado` is not on PATH: source Vivado's settings64.sh on a machine that "
            "has it and run `splitrack build` again; without it, `splitrack verify` (hls4ml emulation) and "
            "`splitrack cosim` (RTL) still check the plan"
        )
    return vivado


def build_bitstream(plan: Plan, name: str) -> Path:
    """hls4ml + Vivado build (synthesis, implementation, bitstream) of one partition; returns its hls folder.

    Needs Vivado on PATH (UserError otherwise, from `vivado_path`); takes hours for a large partition."""
    vivado_path()
    p = plan.partition(name)
    if p.input_shapes or p.output_shapes:
        raise UserError(f"partition {name} reads or writes several tensors: hls4ml's VivadoAccelerator backend builds "
                        "one input and one output stream only, and splitrack has no wrapper for it yet; cut the "
                        "model where one tensor crosses (`splitrack split --at`) to build bitstreams")
    out = plan.path(f"{name}/hls")
    _, hm = _convert(plan.path(p.model_file), p.hls, plan.hls_defaults, out, f"sr_{name}")
    hm.build(csim=False, synth=True, export=True, bitfile=True)
    return out
