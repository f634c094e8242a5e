"""hls4ml's failures as one line that names the partition and the layer (shared by the conversion in
`splitting.hls` and the know-before-you-write check in `splitting.hls_support`)."""
from __future__ import annotations

import traceback
from importlib.metadata import version
from typing import Optional, Tuple

from .errors import UserError

ADVICE = ("replace it with layers hls4ml converts (docs/reference/layers.md) or leave it out of the model")


class HlsUnsupported(UserError):
    """hls4ml cannot convert (or compile) a layer of a partition; the message names both."""


def culprit_layer(tb) -> Optional[Tuple[str, str]]:
    """(name, kind) of the innermost layer a traceback's frames were handling (a local named `layer`): a
    Keras layer (the converter's handlers) or an hls4ml layer (its optimizer passes, which keep the Keras
    layer's name); None when no frame holds one."""
    found = None
    for frame, _ in traceback.walk_tb(tb):
        cand = frame.f_locals.get("layer")
        if cand is None or not isinstance(getattr(cand, "name", None), str):
            continue
        if hasattr(cand, "get_config"):  # Keras
            found = (cand.name, type(cand).__name__)
        elif isinstance(getattr(cand, "class_name", None), str):  # hls4ml's ModelGraph layer
            found = (cand.name, cand.class_name)
    return found


def reason(e: BaseException) -> str:
    """'ExceptionClass: first line of its message' (the line cut at 200 characters), or just the class name."""
    text = str(e).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def failure_message(e: BaseException, what: str, doing: str = "convert") -> str:
    """One line for an hls4ml failure: the hls4ml version, what it could not `doing` (convert or compile),
    the culprit layer when the traceback shows one, the reason, and the advice."""
    layer = culprit_layer(e.__traceback__)
    where = f"layer {layer[0]!r} ({layer[1]}) of {what}" if layer is not None else what
    return f"hls4ml {version('hls4ml')} cannot {doing} {where} ({reason(e)}): {ADVICE}"
