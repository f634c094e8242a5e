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
import shutil
import sys
import time
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Dict

from .emulation import EmulationLib
from .errors import UserError
from .plan import Plan
from .untrusted import MODEL_LIMIT, loads_json, read_bytes
from .user_cache import cache_root

CACHE = cache_root() / "hls"
ARTIFACT = "artifact.json"
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
    claims (`weights_sha`; the build checks the file against it), the hls4ml configuration, backend defaults
    and the installed hls4ml version. Keyed on the bytes present, a model swapped under an unchanged
    plan.json never finds the original's build."""
    data = keras_file if isinstance(keras_file, bytes) else _model_bytes(Path(keras_file))
    arch, content = _model_content(data, str(keras_file) if not isinstance(keras_file, bytes) else "model")
    body = json.dumps(
        {"arch": arch, "content": content, "weights": weights_sha, "hls": hls_cfg, "backend": hls_defaults,
         "hls4ml": version("hls4ml")},
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:20]


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


def _convert_model(model, hls_cfg: dict, hls_defaults: dict, out: Path, project: str):
    import hls4ml

    cfg = json.loads(json.dumps(hls_cfg))  # hls4ml mutates its config
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


def compiled(keras_file: Path, weights_sha: str, hls_cfg: dict, hls_defaults: dict, project: str,
             cache: Path = None) -> Path:
    """The cached hls4ml project folder of a model with its config, compiled if it is not there yet.

    The model file is read once (bounded: splitting.untrusted); the key is of those bytes (cache_key), and a
    build copies them into the entry (`model.keras`) and converts that copy, so what is built is what was
    keyed. Before anything is compiled, the copy's weights are checked against `weights_sha` (the plan's
    claim; '' skips the check): a model swapped under an unchanged plan.json is refused, and no entry is
    written. Raises UserError for that, for a file that is not a model, and for a project name that is not a
    plain name (hls4ml's build script hands it to a shell)."""
    from filelock import FileLock

    from .names import name_problem

    if name_problem("hls4ml project", project):
        raise UserError(name_problem("hls4ml project", project))
    cache = Path(cache or CACHE)
    data = _model_bytes(Path(keras_file))
    key = cache_key(data, weights_sha, hls_cfg, hls_defaults)
    folder = cache / key
    art = folder / ARTIFACT
    if art.is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{key}.lock")):  # parallel workers compile a project once
        if art.is_file():
            return folder
        if folder.exists():
            shutil.rmtree(folder)  # a compile that died half-way
        t0 = time.time()
        from .hls_errors import HlsUnsupported, failure_message

        what = "the whole model" if project == "sr_whole" else (
            f"partition {project[3:]}" if project.startswith("sr_") else project)
        folder.mkdir(parents=True)
        copy = folder / KERAS_COPY
        copy.write_bytes(data)
        try:
            model = _checked_model(copy, weights_sha, f"{keras_file} ({what})")
        except UserError:
            shutil.rmtree(folder, ignore_errors=True)  # nothing of a refused model stays in the cache
            raise
        print(f"  hls4ml: compiling {project} ...", file=sys.stderr, flush=True)
        try:
            hm = _convert_model(model, hls_cfg, hls_defaults, folder / "project", project)
        except Exception as e:  # hls4ml's own failures: one line naming the layer (verify never tracebacks)
            raise HlsUnsupported(failure_message(e, what)) from None
        try:
            hm.compile()
        except Exception as e:
            raise HlsUnsupported(failure_message(e, what, doing="compile")) from None
        libs = sorted((folder / "project" / "firmware").glob(f"{project}-*.so"))
        if not libs:
            raise RuntimeError(f"hls4ml compile of {project} produced no library in {folder}")
        n_in = int(_prod(model.inputs[0].shape[1:]))
        n_out = int(_prod(model.outputs[0].shape[1:]))
        # the library's sha256 from the moment it is built: deploy refuses a cached library damaged later
        meta = {"library": str(libs[-1].relative_to(folder)), "project": project, "n_in": n_in, "n_out": n_out,
                "seconds": round(time.time() - t0, 1), "key": key,
                "library_sha256": hashlib.sha256(libs[-1].read_bytes()).hexdigest(),
                "model_sha256": hashlib.sha256(data).hexdigest(), "weights_sha256": weights_sha}
        art.write_text(json.dumps(meta, indent=1))
        print(f"  hls4ml: {project} compiled in {meta['seconds']} s", file=sys.stderr, flush=True)
    return folder


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
    sizes are in `artifact.json` there; the hls4ml project (firmware, weights) is under `project/`, and the
    exact model it was built from, checked against the plan's weights hash, is `model.keras`
    (`model_file`). Raises PlanError for a model file that is not a regular file inside the plan folder."""
    p = plan.partition(name)
    return compiled(plan.file(p.model_file), p.weights_sha256, p.hls, plan.hls_defaults, f"sr_{name}")


def model_file(plan: Plan, name: str) -> Path:
    """The Keras model of partition `name` as its compiled project was built from it (the bytes the cache key
    was computed from, weights checked against the plan): what later conversions (cosimulation ops, the fast
    model, a bitstream) must read instead of the plan folder's file, which may have changed since."""
    return project_dir(plan, name) / KERAS_COPY


def emulation(plan: Plan, name: str) -> EmulationLib:
    """The hls4ml emulation library of partition `name`, compiling its project on first use (project_dir)."""
    return load_emulation(project_dir(plan, name))


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
    rel = plan.model.get("hls_source") or plan.model["source"]
    if not (plan.path(rel).exists() or plan.path(rel).is_symlink()):
        raise UserError(f"{plan.path(rel)} is missing: the plan folder has no copy of its source model; split again")
    src = plan.file(rel)
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
    out = plan.path(f"{name}/hls")
    _, hm = _convert(model_file(plan, name), p.hls, plan.hls_defaults, out, f"sr_{name}")
    hm.build(csim=False, synth=True, export=True, bitfile=True)
    return out
