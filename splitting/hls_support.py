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


def check_model(model, hls_cfg: dict, hls_defaults: dict, what: str, cache: Path = None) -> None:
    """Convert `model` with hls4ml (no compile) once; HlsUnsupported naming the layer when that fails."""
    from .hls import CACHE, _convert_model

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
