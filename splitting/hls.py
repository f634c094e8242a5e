"""hls4ml conversion of partitions: VivadoAccelerator backend, pynq-z2, io_stream, 100 MHz.

`compile()` builds the bit-accurate emulation library (g++ only). Projects are cached by content hash
under `<cache>/hls/<key>/` (`splitrack cache` shows the folder): a second `verify` of the same plan loads the library without
recompiling. The key is of the model file's bytes as read (never of what plan.json claims alone), and a
build converts exactly those bytes after checking their weights against the plan's hash, so a model swapped
under an unchanged plan.json is refused and never poisons the cache. `splitrack build` runs Vivado when it is on PATH; bitstreams cannot be made without it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Dict, Tuple

from .emulation import EmulationLib
from .errors import UserError
from .hls_types import RULES_VERSION as HLS_TYPES_VERSION
from .names import name_problem
from .plan import Plan
from .untrusted import MODEL_LIMIT, loads_json, read_bytes
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


KERAS_COPY = "model.keras"  # the exact bytes a cache entry was keyed on and built from


def _model_content(data: bytes, what: str) -> tuple:
    """(architecture sha, content sha) of a .keras zip's bytes: the architecture is its config.json without
    object ids; the content is every member but metadata.json (the save date), config.json normalised the
    same way, so two saves of one model give one key. Raises UserError for bytes that are not a .keras zip
    or that unpack to more than MODEL_LIMIT."""
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = sorted(z.infolist(), key=lambda i: i.filename)
            if sum(i.file_size for i in infos) > MODEL_LIMIT:
                raise UserError(f"{what} unpacks to more than {MODEL_LIMIT} bytes: refused")
            if "config.json" not in {i.filename for i in infos}:
                raise UserError(f"{what} is a zip without config.json, not a Keras 3 model: write it again with "
                                "`splitrack split`")
            cfg = _without_object_ids(loads_json(z.read("config.json"), f"{what}: config.json"))
            arch = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
            h = hashlib.sha256()
            for i in infos:
                if i.filename == "metadata.json" or i.is_dir():
                    continue
                h.update(f"{i.filename}\0{i.file_size}\0".encode())
                h.update(arch.encode() if i.filename == "config.json" else z.read(i))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError) as e:
        raise UserError(f"{what} is not a Keras model file ({type(e).__name__}: {e}): write the plan again with "
                        "`splitrack split`") from None
    return arch, h.hexdigest()


def _model_bytes(keras_file: Path) -> bytes:
    """The bytes of a model file, bounded and never blocking (splitting.untrusted); UserError naming it."""
    try:
        return read_bytes(keras_file, MODEL_LIMIT, str(keras_file))
    except FileNotFoundError:
        raise UserError(f"{keras_file} is missing: the plan folder is incomplete; write it again with "
                        "`splitrack split`") from None


def cache_key(keras_file, weights_sha: str, hls_cfg: dict, hls_defaults: dict) -> str:
    """The compiled-project cache key of a model (a .keras path, or its bytes): first 20 hex digits of the
    SHA-256 of what the file holds (architecture and weights, `_model_content`), the weights hash the plan
    claims (`weights_sha`; the build checks the file against it), the hls4ml configuration, backend defaults,
    the installed hls4ml version and the version of the per-layer types added at conversion (`hls_types`). Keyed on the bytes present, a model swapped under an unchanged
    plan.json never finds the original's build."""
    data = keras_file if isinstance(keras_file, bytes) else _model_bytes(Path(keras_file))
    arch, content = _model_content(data, str(keras_file) if not isinstance(keras_file, bytes) else "model")
    body = json.dumps(
        {"arch": arch, "content": content, "weights": weights_sha, "hls": hls_cfg, "backend": hls_defaults,
         "hls4ml": version("hls4ml"), "types": HLS_TYPES_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def project_what(project: str) -> str:
    """What an hls4ml project name stands for, for messages: 'the whole model', 'partition s1', or the name."""
    if project == "sr_whole":
        return "the whole model"
    return f"partition {project[3:]}" if project.startswith("sr_") else project


def owner_of(hls_name: str, keras_names) -> str:
    """The Keras layer an hls4ml layer was made from: hls4ml names them `<layer>` and `<layer>_<activation>`
    (the longest name that fits wins); the input quantiser `<next>_iq` of an HGQ2 layer, and layers hls4ml
    inserts, belong to none ("")."""
    if hls_name.endswith("_iq"):
        return ""
    fits = [n for n in keras_names if hls_name == n or hls_name.startswith(n + "_")]
    return max(fits, key=len, default="")


def type_text(precision) -> str:
    """An hls4ml precision as FixedType text (ap_fixed<W,I,...> with its rounding and overflow modes), ""
    for types that are not fixed point or integers (exponent, xnor, float)."""
    from hls4ml.model.types import FixedPrecisionType, IntegerPrecisionType

    from .contract import FixedType

    if not isinstance(precision, (FixedPrecisionType, IntegerPrecisionType)):
        return ""
    rnd = getattr(precision, "rounding_mode", None)
    sat = getattr(precision, "saturation_mode", None)
    return str(FixedType(int(precision.width), int(precision.integer), bool(precision.signed),
                         f"AP_{rnd.name}" if rnd is not None else "AP_TRN", f"AP_{sat.name}" if sat is not None else "AP_WRAP"))


def layer_records(hm, model) -> list:
    """What splitrack keeps of each layer of an hls4ml ModelGraph made from the Keras `model` (JSON-ready):
    name, hls4ml class, owner (the Keras layer, `owner_of`), output shape, its types (FixedType text, and
    `input_t`: the type it reads), scalar attributes (activation, table sizes, softmax implementation) and
    whether its output is traced."""
    names = [l.name for l in model.layers]
    out = []
    for hl in hm.get_layers():
        types = {k: type_text(v.precision) for k, v in hl.types.items()}
        try:
            types["input_t"] = type_text(hl.get_input_variable().type.precision)
        except Exception:  # the input layer reads nothing
            pass
        attrs = {k: v for k, v in hl.attributes.items() if isinstance(v, (bool, int, float))
                 or (isinstance(v, str) and len(v) < 64 and k not in ("name", "class_name", "module"))}
        out.append({"name": hl.name, "class": hl.class_name, "owner": owner_of(hl.name, names),
                    "shape": [int(d) for d in hl.get_output_variable().shape],
                    "types": {k: v for k, v in types.items() if v}, "attrs": attrs,
                    "traced": bool(hl.get_attr("function_cpp", None) and hl.get_attr("trace", False)),
                    "variables": len(hl.get_variables())})
    return out


def _checked_model(keras_file: Path, weights_sha: str, what: str = ""):
    """The Keras model of a model file; with `weights_sha`, UserError unless its weights have that hash
    (graph.weights_sha256): checked before hls4ml sees the model."""
    from .graph import load_model, weights_sha256

    model = load_model(keras_file)
    if weights_sha and weights_sha256(model) != weights_sha:
        raise UserError(f"{what or keras_file}: its weights (hash {weights_sha256(model)}) are not the ones the plan "
                        f"names ({weights_sha}): the file was changed after the plan was written; refused (nothing "
                        "was built or cached): write the plan again with `splitrack split`")
    return model


def _convert(keras_file: Path, hls_cfg: dict, hls_defaults: dict, out: Path, project: str):
    """(Keras model, hls4ml model) of a model file."""
    model = _checked_model(keras_file, "")
    return model, _convert_model(model, hls_cfg, hls_defaults, out, project)


def _convert_model(model, hls_cfg: dict, hls_defaults: dict, out: Path, project: str, what: str = None):
    """hls4ml's ModelGraph of the Keras `model` (converted, not compiled). Every failure of hls4ml's, whatever
    the layer, is HlsUnsupported: one line naming `what` (default from the project name) and the layer."""
    from .hls_errors import HlsUnsupported, failure_message
    from .quiet_tensorflow import library_output

    from .hls_types import accumulators

    cfg = accumulators(model, json.loads(json.dumps(hls_cfg)))  # a copy: hls4ml mutates its config
    try:
        with library_output(f"hls4ml: converting {what or project_what(project)}"):
            hm = _hls4ml_convert(model, cfg, hls_defaults, out, project)
    except Exception as e:  # hls4ml raises every kind (KeyError, NotImplementedError, AssertionError, ...)
        raise HlsUnsupported(failure_message(e, what or project_what(project))) from None
    set_fifo_depths(hm, hls_defaults)  # ours: a failure here is splitrack's, not hls4ml's
    return hm


def set_fifo_depths(hm, hls_defaults: dict) -> None:
    """With hls_defaults['fifo_depth'] == 'optimized' (what `plan` assumed), set each stream's depth pragma as
    hls4ml's FIFO depth optimisation would leave it (splitting.fifo_depths.set_hls4ml_depths) before the
    project is written; otherwise keep hls4ml's default depths. The C emulation does not depend on depths."""
    if hls_defaults.get("fifo_depth") == "optimized" and hls_defaults.get("io_type", "io_stream") == "io_stream":
        from .fifo_depths import set_hls4ml_depths

        set_hls4ml_depths(hm)


def _hls4ml_convert(model, cfg: dict, hls_defaults: dict, out: Path, project: str):
    import hls4ml

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
        return project_what(self.project)


def compiled(keras_file: Path, weights_sha: str, hls_cfg: dict, hls_defaults: dict, project: str,
             cache: Path = None) -> Path:
    """The cached hls4ml project folder of a model with its config, compiled if it is not there yet.

    The model file is read once (bounded: splitting.untrusted); the key is of those bytes (cache_key), and a
    build copies them into the entry (`model.keras`) and converts that copy, so what is built is what was
    keyed. Before anything is compiled, the copy's weights are checked against `weights_sha` (the plan's
    claim; '' skips the check): a model swapped under an unchanged plan.json is refused, and no entry is
    written. Raises UserError for that, for a file that is not a model, and for a project name that is not a
    plain name (hls4ml's build script hands it to a shell)."""
    return compile_projects([Project(Path(keras_file), weights_sha, hls_cfg, hls_defaults, project)], cache=cache)[0]


def _trace_all(hm) -> None:
    """Make every build traceable (hls4ml's TraceOutput, as its ModelGraph.trace sets it up): verify reads
    each layer's output back; until a frame asks for the trace, the library skips it."""
    hm.config.trace_output = True
    for hl in hm.get_layers():
        if hl.get_attr("function_cpp", None):
            hl.set_attr("trace", True)


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
    """The cached project folders of `projects` (a list of Project), compiling those not cached yet
    (start_projects, then Builds.wait). Raises HlsUnsupported naming the project and layer when hls4ml
    fails."""
    return start_projects(projects, cache=cache, workers=workers, progress=progress).wait()


class Builds:
    """The hls4ml builds start_projects set going. `ready[i]` (a concurrent.futures.Future) is done, with
    project i's folder, as soon as its library is there: at once when it was cached, when its g++ build ends
    otherwise (another process's build: in `wait`), or with the build's exception. `wait()` returns every
    folder once all builds ended, and raises the first failure."""

    def __init__(self, folders: list, ready: list, pool=None, futures=(), locks=(), waiting=(), again=None):
        self.folders, self.ready = folders, ready
        self._pool, self._futures, self._locks, self._waiting = pool, list(futures), list(locks), list(waiting)
        self._again = again  # (projects, start_projects' keywords): to build what another process left unbuilt
        self._waited = False

    def wait(self) -> list:
        """The project folders (in the order of the projects), once every build has ended; raises the first
        build failure (HlsUnsupported, RuntimeError). A second call returns at once."""
        if self._waited:
            return self._result()
        self._waited = True
        try:
            for f in self._futures:
                f.exception()  # every build ends before anything is raised (their locks are held)
        finally:
            self.close()
        for lock in self._waiting:
            with lock:  # the other process finished, failed or died
                pass
        left = [i for i, f in enumerate(self.ready) if not f.done() and not (self.folders[i] / ARTIFACT).is_file()]
        if left and self._again:
            # the other process's build failed or died: built here once more, so that its failure (say
            # HlsUnsupported) is this command's one-line error, never a folder without its library
            projects, kw = self._again
            try:
                start_projects([projects[i] for i in left], **kw).wait()
            except BaseException as e:
                for i in left:
                    self.ready[i].set_exception(e)
                raise
        for i, f in enumerate(self.ready):
            if not f.done():  # another process built it (or failed twice: its artifact is then missing)
                _settle(f, self.folders[i])
        return self._result()

    def close(self) -> None:
        """Let the builds under way end, then release their locks (what `wait` does first; alone when the
        caller gives up, e.g. a conversion failed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for lock in self._locks:
            lock.release()
        self._locks = []

    def _result(self) -> list:
        for f in list(self._futures) + list(self.ready):
            if f.done() and f.exception() is not None:
                raise f.exception()
        return self.folders


def _settle(future, folder: Path) -> None:
    """Resolve a Builds.ready future with `folder`, or with an error when no build left its artifact."""
    if (folder / ARTIFACT).is_file():
        future.set_result(folder)
    else:
        future.set_exception(RuntimeError(f"no compiled hls4ml project in {folder}: another process's build of it "
                                          "did not finish; run the command again"))


def start_projects(projects, cache: Path = None, workers: int = None, progress=None, again: bool = True) -> Builds:
    """Set the builds of `projects` (a list of Project) going and return at once (Builds) with their
    conversions done: the cold path's first step, so that a caller works while g++ runs.

    Each project not cached yet is converted and written by hls4ml in this thread, one after another
    (hls4ml's converters cannot run in two threads at once), and its C++ is built (hls4ml's build_lib.sh:
    g++) in a pool of `workers` threads (default_workers) while the next is converted; the largest first.
    A project another process is compiling (its lock is held) is waited for in Builds.wait, and built there
    once more (with `again`) when that process left no library (its build failed or it died). Projects with
    the same content share one build (the cache key). `progress` gets one line per project started and
    finished. Raises HlsUnsupported naming the project and layer when hls4ml cannot convert one (after the
    builds already started have ended)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from filelock import FileLock, Timeout

    say = progress or (lambda m: print(f"  hls4ml: {m}", file=sys.stderr, flush=True))
    cache = Path(cache or CACHE)
    folders, todo, by_key = [], [], {}
    ready = [Future() for _ in projects]
    for i, pr in enumerate(projects):
        if name_problem("hls4ml project", pr.project):
            raise UserError(name_problem("hls4ml project", pr.project))
        data = _model_bytes(Path(pr.keras_file))  # read once: what is keyed is what is built (compiled())
        key = cache_key(data, pr.weights_sha, pr.hls_cfg, pr.hls_defaults)
        folders.append(cache / key)
        if (cache / key / ARTIFACT).is_file():
            ready[i].set_result(cache / key)
            continue
        if key not in by_key:
            todo.append((pr, key, data))
        by_key.setdefault(key, []).append(i)
    if not todo:
        return Builds(folders, ready)
    cache.mkdir(parents=True, exist_ok=True)
    todo.sort(key=lambda t: -len(t[2]))  # the largest first: it ends last otherwise
    n = len(todo)
    workers = workers or default_workers(n)
    if n > 1:
        say(f"compiling {n} projects, {workers} at a time")
    pool = ThreadPoolExecutor(max_workers=workers)
    locks, waiting, futures = [], [], []
    done = [0]

    def built(key, folder, err) -> None:
        for i in by_key[key]:
            if err is None:
                ready[i].set_result(folder)
            else:
                ready[i].set_exception(err)

    def build(pr, key, folder, model, hm, records, data, t0):
        err = _build(pr, key, folder, model, hm, records, data, t0)
        if err is None:
            done[0] += 1
            say(f"{pr.project} compiled in {json.loads((folder / ARTIFACT).read_text())['seconds']} s"
                + (f" ({done[0]}/{n})" if n > 1 else ""))
        built(key, folder, err)
        if err is not None:
            raise err

    try:
        for pr, key, data in todo:
            folder = cache / key
            lock = FileLock(str(cache / f"{key}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:  # another process compiles it: wait for it after ours are under way
                waiting.append(lock)
                continue
            locks.append(lock)
            if (folder / ARTIFACT).is_file():
                built(key, folder, None)
                continue
            t0 = time.time()
            model, hm, records = _convert_project(pr, folder, data)
            futures.append(pool.submit(build, pr, key, folder, model, hm, records, data, t0))
    except BaseException:
        Builds(folders, ready, pool, futures, locks).close()  # the builds under way end, then the error
        raise
    return Builds(folders, ready, pool, futures, locks, waiting,
                  again=(projects, dict(cache=cache, workers=workers, progress=say, again=False)) if again else None)


def _convert_project(pr: Project, folder: Path, data: bytes):
    """(Keras model, hls4ml ModelGraph, layer_records) of a project, converted and written into `folder`
    (emptied first: a compile that died half-way) from `data`, the model bytes it is keyed on (copied there
    as KERAS_COPY, weights checked against the plan: UserError, and nothing stays in the cache)."""
    from .hls_errors import HlsUnsupported, failure_message
    from .quiet_tensorflow import library_output

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    copy = folder / KERAS_COPY
    copy.write_bytes(data)
    try:
        model = _checked_model(copy, pr.weights_sha, f"{pr.keras_file} ({pr.what})")
    except UserError:
        shutil.rmtree(folder, ignore_errors=True)  # nothing of a refused model stays in the cache
        raise
    hm = _convert_model(model, pr.hls_cfg, pr.hls_defaults, folder / "project", pr.project)
    try:
        _trace_all(hm)
        with library_output(f"hls4ml: writing {pr.what}"):
            hm.write()
        return model, hm, layer_records(hm, model)
    except UserError:
        raise
    except Exception as e:  # hls4ml's own failures: one line naming the layer (never a traceback)
        raise HlsUnsupported(failure_message(e, pr.what)) from None


def _build(pr: Project, key: str, folder: Path, model, hm, records: list, data: bytes, t0: float):
    """Build a converted project's library (hls4ml's compile: g++ in a child process, the GIL released) and
    write its ARTIFACT; None, or the exception (HlsUnsupported) that says why it failed."""
    from .hls_errors import HlsUnsupported, failure_message

    from .quiet_tensorflow import thread_output

    lib = None
    try:
        with thread_output(f"hls4ml: compiling {pr.what}"):  # a failed g++ build's log: hls4ml print()s it
            lib = hm.config.backend.compile(hm)
    except Exception as e:
        if "Failed to compile" not in str(e):  # not g++: hls4ml itself
            return HlsUnsupported(failure_message(e, pr.what, doing="compile"))
    if lib is None or not Path(lib).is_file():
        # g++ failed (the VivadoAccelerator build_lib.sh has no `set -e`: a failed g++ there exits 0 and hls4ml
        # names a library that is not there)
        return _compile_failure(pr, Path(hm.config.get_output_dir()))
    ins = [int(_prod(t.shape[1:])) for t in model.inputs]
    outs = [int(_prod(t.shape[1:])) for t in model.outputs]
    libp = Path(lib)
    # several inputs/outputs: lists of their sizes (EmulationLib takes either); the library's sha256 from
    # the moment it is built: deploy refuses a cached library damaged later
    meta = {"library": str(libp.relative_to(folder)), "project": pr.project,
            "n_in": ins if len(ins) > 1 else ins[0], "n_out": outs if len(outs) > 1 else outs[0],
            "seconds": round(time.time() - t0, 1), "key": key,
            "library_sha256": hashlib.sha256(libp.read_bytes()).hexdigest(),
            "model_sha256": hashlib.sha256(data).hexdigest(), "weights_sha256": pr.weights_sha,
            "layers": records}  # the types hls4ml chose: verify's quantisation bound
    (folder / ARTIFACT).write_text(json.dumps(meta, indent=1))
    return None


def _compile_failure(pr: Project, prj: Path) -> UserError:
    """The one-line error of a g++ build of hls4ml's C++ that failed: hls4ml keeps the compiler's output only
    when its script fails (and prints it), so the script runs once more here, its output going to the library
    log, and the message quotes the compiler's first error line."""
    import subprocess

    from .hls_errors import HlsUnsupported
    from .quiet_tensorflow import library_log_path, library_text

    try:
        r = subprocess.run(["bash", "build_lib.sh"], cwd=prj, capture_output=True, text=True, timeout=1800)
        out = (r.stdout or "") + (r.stderr or "")
    except (OSError, subprocess.SubprocessError) as e:
        out = f"build_lib.sh could not run again: {e}"
    library_text(f"hls4ml: g++ output of {pr.what}", out + "\n")
    errors = [line.strip() for line in out.splitlines() if "error" in line.lower()]
    first = (errors or [line.strip() for line in out.splitlines() if line.strip()] or ["no output"])[0][:200]
    return HlsUnsupported(f"g++ could not build hls4ml's C++ of {pr.what} ({first}); the compiler's whole output is in "
                          f"{library_log_path()} (`bash build_lib.sh` in {prj} shows it again): is g++ installed and working?")


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


def build_inputs(plan: Plan, name: str = None) -> Tuple[Path, str, dict, str]:
    """(Keras file, weights sha256, hls4ml configuration, project name) of partition `name`, or of the
    whole model (None: the source with its BatchNormalization folded, `hls_source`, when the plan folded
    any). UserError when the plan folder lacks the whole model's file; PlanError for a model file that is
    not a regular file inside the plan folder (plan.file)."""
    if name is not None:
        p = plan.partition(name)
        return plan.file(p.model_file), p.weights_sha256, p.hls, f"sr_{name}"
    rel = plan.model.get("hls_source") or plan.model["source"]
    if not (plan.path(rel).exists() or plan.path(rel).is_symlink()):
        raise UserError(f"{plan.path(rel)} is missing: the plan folder has no copy of its source model; split again")
    sha = plan.model.get("hls_source_weights_sha256") or plan.model["weights_sha256"]
    return plan.file(rel), sha, monolithic_hls_config(plan), "sr_whole"


def project_dir(plan: Plan, name: str) -> Path:
    """The compiled hls4ml project of one partition (compiling it on first use). The `.so`, its name and
    sizes are in `artifact.json` there; the hls4ml project (firmware, weights) is under `project/`, and the
    exact model it was built from, checked against the plan's weights hash, is `model.keras`
    (`model_file`). Raises PlanError for a model file that is not a regular file inside the plan folder."""
    keras_file, sha, cfg, project = build_inputs(plan, name)
    return compiled(keras_file, sha, cfg, plan.hls_defaults, project)


def model_file(plan: Plan, name: str) -> Path:
    """The Keras model of partition `name` as its compiled project was built from it (the bytes the cache key
    was computed from, weights checked against the plan): what later conversions (cosimulation ops, the fast
    model, a bitstream) must read instead of the plan folder's file, which may have changed since."""
    return project_dir(plan, name) / KERAS_COPY


def cached_project(plan: Plan, name: str) -> "Path | None":
    """The compiled hls4ml project of partition `name` when the cache holds it (project_dir's folder), None
    when it does not: a look, never a compile (milliseconds, for checks that must stay quick)."""
    p = plan.partition(name)
    try:
        data = _model_bytes(plan.file(p.model_file))
    except (OSError, UserError):
        return None
    folder = CACHE / cache_key(data, p.weights_sha256, p.hls, plan.hls_defaults)
    return folder if (folder / ARTIFACT).is_file() else None


def emulation(plan: Plan, name: str) -> EmulationLib:
    """The hls4ml emulation library of partition `name`, compiling its project on first use (project_dir)."""
    return load_emulation(project_dir(plan, name))


def plan_projects(plan: Plan, whole: bool = True) -> list:
    """The hls4ml Projects of a plan: the whole model (with `whole`) and every partition (build_inputs:
    UserError for a missing whole model, PlanError for a model file outside the plan folder)."""
    names = ([None] if whole else []) + [p.name for p in plan.ordered_partitions()]
    out = []
    for name in names:
        keras_file, sha, cfg, project = build_inputs(plan, name)
        out.append(Project(keras_file, sha, cfg, plan.hls_defaults, project))
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
    keras_file, sha, cfg, project = build_inputs(plan, None)
    return load_emulation(compiled(keras_file, sha, cfg, plan.hls_defaults, project))


def layers_of(plan: Plan, name: str = None, traced: bool = False) -> Tuple[Path, list]:
    """(compiled project folder, layer_records) of partition `name` or of the whole model (None). With
    `traced`, a project whose layers can be traced: every project compiled now can; one compiled by an
    older splitrack is compiled again with TraceOutput (cached like any build). A project without the
    records is converted once more to read them."""
    keras_file, sha, cfg, project = build_inputs(plan, name)
    folder = compiled(keras_file, sha, cfg, plan.hls_defaults, project)
    meta = json.loads((folder / ARTIFACT).read_text())
    if traced and not any(r.get("traced") for r in meta.get("layers", [])):
        cfg = json.loads(json.dumps(cfg))
        cfg.setdefault("Model", {})["TraceOutput"] = True
        folder = compiled(keras_file, sha, cfg, plan.hls_defaults, project)
        meta = json.loads((folder / ARTIFACT).read_text())
    if "layers" not in meta:
        import tempfile

        from .graph import load_model

        built = folder / KERAS_COPY  # the bytes the project was built from
        model = load_model(built if built.is_file() else keras_file)
        with tempfile.TemporaryDirectory(prefix="splitrack-types-") as tmp:
            meta["layers"] = layer_records(_convert_model(model, cfg, plan.hls_defaults, Path(tmp) / "p", project), model)
        tmpf = folder / f"{ARTIFACT}.{os.getpid()}.tmp"
        tmpf.write_text(json.dumps(meta, indent=1))
        tmpf.replace(folder / ARTIFACT)
    return folder, meta["layers"]


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
    _, hm = _convert(model_file(plan, name), p.hls, plan.hls_defaults, out, f"sr_{name}")
    from .quiet_tensorflow import library_output

    with library_output(f"hls4ml + Vivado: building partition {name}"):  # hours of tool output: the log
        hm.build(csim=False, synth=True, export=True, bitfile=True)
    return out
