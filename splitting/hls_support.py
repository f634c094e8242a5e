"""What hls4ml 1.3 can convert under Keras 3, known before a plan is written.

hls4ml's handler registry is not enough to know it: its Keras-3 table has a handler for SeparableConv2D that
then fails (`'SeparableConv2D' object has no attribute 'kernel'`), and what a handler accepts depends on the
layer's settings (a ReLU with max_value is refused). So each partition (and the whole-model reference) is
converted once, without compiling, exactly as `verify` will convert it; the outcome is cached by content
hash (architecture, hls4ml configuration, backend settings, hls4ml version) under
$SPLITRACK_CACHE/hls_check/. A failure names the layer hls4ml was converting when it failed (found in the
traceback, hls4ml's dispatcher holds it as `layer`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

from .hls_errors import HlsUnsupported


def _key(model, hls_cfg: dict, hls_defaults: dict) -> str:
    from .hls import _without_object_ids

    body = json.dumps({"arch": _without_object_ids(model.get_config()), "hls": hls_cfg, "backend": hls_defaults,
                       "hls4ml": version("hls4ml")}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def _padded_pooling(layer, hls_defaults: dict):
    """A pooling layer with padding='same' that does pad (the window overhangs the input): hls4ml's io_stream
    pooling asserts that it has no padding (nnet_pooling_stream.h, pooling1d/2d_buffer_cl), and the emulation
    aborts. Seen here for Max and Average pooling, 1D and 2D."""
    cfg = layer.get_config()
    if cfg.get("padding") != "same" or hls_defaults.get("io_type", "io_stream") != "io_stream":
        return None
    spatial = [int(d) for d in layer.input.shape[1:-1]]
    pool = cfg.get("pool_size") or 2
    pool = list(pool) if isinstance(pool, (list, tuple)) else [pool] * len(spatial)
    strides = cfg.get("strides") or pool
    strides = list(strides) if isinstance(strides, (list, tuple)) else [strides] * len(spatial)
    pads = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(spatial, pool, strides)]
    if any(pads):
        return (f"padding='same' pads this input by {pads} and hls4ml's io_stream pooling asserts no padding "
                "(its emulation aborts in nnet_pooling_stream.h); use padding='valid', or a ZeroPadding layer before it")
    return None


# Activations hls4ml 1.3 writes in io_stream as calls of its io_parallel template (nnet_activation.h has them,
# nnet_activation_stream.h does not): the generated C++ does not compile.
NO_STREAM_ACTIVATIONS = ("relu6", "relu1")


def _activation_without_stream(layer, hls_defaults: dict):
    """An activation (its own layer, or a layer's `activation=`) that hls4ml has no io_stream version of."""
    from .rebuild import function_name

    act = function_name(layer.get_config().get("activation"))
    if act in NO_STREAM_ACTIVATIONS and hls_defaults.get("io_type", "io_stream") == "io_stream":
        return (f"hls4ml has no io_stream {act} (nnet_activation_stream.h), and the code it writes for it does not "
                "compile; use relu, or a ReLU without max_value")
    return None


# Layers hls4ml converts and then fails on (its compiled emulation aborts, or its C++ does not compile), by
# Keras class: function (layer, backend settings) -> why, or None. Found by running them; refused before a
# plan is written.
KNOWN_CRASHES = {cls: _padded_pooling for cls in ("AveragePooling1D", "AveragePooling2D", "MaxPooling1D", "MaxPooling2D")}
KNOWN_CRASHES.update({cls: _activation_without_stream for cls in ("Activation", "Dense", "Conv1D", "Conv2D",
                                                                   "DepthwiseConv1D", "DepthwiseConv2D")})


def check_known_crashes(model, hls_defaults: dict, what: str) -> None:
    """HlsUnsupported naming hls4ml and the layer when `model` has a layer of KNOWN_CRASHES that crashes."""
    for layer in model.layers:
        rule = KNOWN_CRASHES.get(type(layer).__name__)
        why = rule(layer, hls_defaults) if rule else None
        if why:
            raise HlsUnsupported(f"hls4ml {version('hls4ml')} cannot run layer {layer.name!r} ({type(layer).__name__}) "
                                 f"of {what}: {why}")


def check_model(model, hls_cfg: dict, hls_defaults: dict, what: str, cache: Path = None) -> None:
    """Convert `model` with hls4ml (no compile) once; HlsUnsupported naming the layer when that fails, or
    when it has a layer hls4ml converts and then crashes on (KNOWN_CRASHES)."""
    from .hls import CACHE, _convert_model

    check_known_crashes(model, hls_defaults, what)

    folder = Path(cache or CACHE).parent / "hls_check"
    f = folder / f"{_key(model, hls_cfg, hls_defaults)}.json"
    if f.is_file():
        known = json.loads(f.read_text())
        if known.get("ok"):
            return
        raise HlsUnsupported(known["message"].replace("{what}", what))
    with tempfile.TemporaryDirectory(prefix="splitrack-check-") as tmp:
        try:
            _convert_model(model, hls_cfg, hls_defaults, Path(tmp) / "p", "sr_check", what="{what}")
            result = {"ok": True}
        except HlsUnsupported as e:  # any failure of hls4ml's conversion means "cannot convert"
            result = {"ok": False, "message": str(e)}
    folder.mkdir(parents=True, exist_ok=True)
    tmpf = f.with_suffix(f".{os.getpid()}.tmp")
    tmpf.write_text(json.dumps(result))
    tmpf.replace(f)
    if not result["ok"]:
        raise HlsUnsupported(result["message"].replace("{what}", what))


def check_plan(plan, models, progress=None) -> None:
    """Every partition of `plan` (models: split.PlanModels) and the whole-model reference convert with
    hls4ml; HlsUnsupported (one line, naming the partition and layer) otherwise."""
    from .hls import monolithic_hls_config

    say = progress or (lambda m: None)
    say(f"checking that hls4ml converts each of the {len(models)} partitions")
    for p in plan.ordered_partitions():
        check_model(models[p.name], p.hls, plan.hls_defaults, f"partition {p.name}")
    whole = getattr(models, "folded_source", None) or models.source
    if whole is not None:
        check_model(whole, monolithic_hls_config(plan), plan.hls_defaults, "the whole model (the verify reference)")
