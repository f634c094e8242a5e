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
from importlib.metadata import version
from pathlib import Path
from typing import Dict, Tuple

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

    cfg = json.loads(json.dumps(hls_cfg))  # hls4ml mutates its config
    try:
        with library_output(f"hls4ml: converting {what or project_what(project)}"):
            return _hls4ml_convert(model, cfg, hls_defaults, out, project)
    except Exception as e:  # hls4ml raises every kind (KeyError, NotImplementedError, AssertionError, ...)
        raise HlsUnsupported(failure_message(e, what or project_what(project))) from None


def _hls4ml_convert(model, cfg: dict, hls_defaults: dict, out: Path, project: str):
    import hls4ml

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

        folder.mkdir(parents=True)
        copy = folder / KERAS_COPY
        copy.write_bytes(data)
        try:
            model = _checked_model(copy, weights_sha, f"{keras_file} ({project_what(project)})")
        except UserError:
            shutil.rmtree(folder, ignore_errors=True)  # nothing of a refused model stays in the cache
            raise
        hm = _convert_model(model, hls_cfg, hls_defaults, folder / "project", project)  # one-line failures
        # every build can be traced (hls4ml's TraceOutput, as its ModelGraph.trace sets it up): verify reads
        # each layer's output back; until a frame asks for the trace, the library skips it
        hm.config.trace_output = True
        for hl in hm.get_layers():
            if hl.get_attr("function_cpp", None):
                hl.set_attr("trace", True)
        from .quiet_tensorflow import library_output

        try:
            with library_output(f"hls4ml: compiling {project_what(project)}"):
                hm.compile()
        except Exception as e:
            raise HlsUnsupported(failure_message(e, project_what(project), doing="compile")) from None
        libs = sorted((folder / "project" / "firmware").glob(f"{project}-*.so"))
        if not libs:
            raise RuntimeError(f"hls4ml compile of {project} produced no library in {folder}")
        n_in = int(_prod(model.inputs[0].shape[1:]))
        n_out = int(_prod(model.outputs[0].shape[1:]))
        # the library's sha256 from the moment it is built: deploy refuses a cached library damaged later
        meta = {"library": str(libs[-1].relative_to(folder)), "project": project, "n_in": n_in, "n_out": n_out,
                "seconds": round(time.time() - t0, 1), "key": key,
                "library_sha256": hashlib.sha256(libs[-1].read_bytes()).hexdigest(),
                "model_sha256": hashlib.sha256(data).hexdigest(), "weights_sha256": weights_sha,
                "layers": layer_records(hm, model)}  # the types hls4ml chose: verify's quantisation bound
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
    out = plan.path(f"{name}/hls")
    _, hm = _convert(model_file(plan, name), p.hls, plan.hls_defaults, out, f"sr_{name}")
    from .quiet_tensorflow import library_output

    with library_output(f"hls4ml + Vivado: building partition {name}"):  # hours of tool output: the log
        hm.build(csim=False, synth=True, export=True, bitfile=True)
    return out
