"""The shape of a plan.json, checked where it enters (before any dataclass is built from it).

A plan's `hash` is a content hash, not a signature: anyone can write a plan.json with a valid hash, so its
hash proves nothing about its shape. `check_plan_dict` checks every field a plan is built from (types,
ranges, sizes) and refuses in one line naming the field (`stages[0].partitions: must be a list of names,
got null`); the structure (every partition in one stage, links between known ends) is `Plan.check`'s.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

MAX_ELEMENTS = 1 << 26  # elements of one tensor (a link, a partition's input or output): 256 MiB of float32
MAX_ITEMS = 4096  # stages, partitions, links, layers of one plan
MAX_DATA_WIDTH = 1024  # AXI-stream bits per beat
MAX_FIFO_DEPTH = 1 << 20

Check = Callable[[Any], str]  # '' when fine, else what is wrong


def _int(lo: int, hi: int) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"must be an integer {lo}..{hi}, got {v!r}"
        return ""
    return check


def _str(v) -> str:
    return "" if isinstance(v, str) and len(v) <= 4096 else f"must be a string, got {_short(v)}"


def _dict(v) -> str:
    return "" if isinstance(v, dict) else f"must be an object, got {_short(v)}"


def _opt(check: Check) -> Check:
    return lambda v: "" if v is None else check(v)


def _list_of(check: Check, what: str) -> Check:
    def c(v):
        if not isinstance(v, list) or len(v) > MAX_ITEMS:
            return f"must be a list of {what}, got {_short(v)}"
        for i, x in enumerate(v):
            if check(x):
                return f"[{i}] {check(x)}"
        return ""
    return c


def _shape(v) -> str:
    if not isinstance(v, list) or not 0 < len(v) <= 8 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1
                                                             for x in v):
        return f"must be a list of 1 to 8 positive integers, got {_short(v)}"
    n = 1
    for x in v:
        n *= x
    return "" if n <= MAX_ELEMENTS else f"holds {n} elements, more than {MAX_ELEMENTS}"


def _data_width(v) -> str:
    bad = _int(8, MAX_DATA_WIDTH)(v)
    return bad or ("" if v % 8 == 0 else f"must be a multiple of 8, got {v}")


def _short(v) -> str:
    r = "null" if v is None else repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


_NAMES = _list_of(_str, "names")
STAGE: Dict[str, Check] = {"index": _int(0, MAX_ITEMS), "kind": _str, "partitions": _NAMES}
PARTITION: Dict[str, Check] = {
    "name": _str, "stage": _int(0, MAX_ITEMS), "kind": _str, "layers": _NAMES, "input_shape": _shape,
    "output_shape": _shape, "input_precision": _str, "output_precision": _str, "hls": _dict,
    "weights_sha256": _str, "split": _opt(_dict), "estimate": _opt(_dict)}
SELECT: Dict[str, Check] = {"axis": _int(-8, 8), "start": _int(0, MAX_ELEMENTS), "stop": _int(1, MAX_ELEMENTS)}
LINK: Dict[str, Check] = {
    "src": _str, "dst": _str, "shape": _shape, "dtype": _str, "combine": _str, "axis": _int(-8, 8),
    "index": _int(0, MAX_ITEMS), "count": _int(1, MAX_ITEMS), "select": _opt(_dict), "data_width": _data_width,
    "fifo_depth": _opt(_int(1, MAX_FIFO_DEPTH)), "order": _str,
    "elements": _int(1, MAX_ELEMENTS), "payload_bytes": _int(1, 8 * MAX_ELEMENTS), "packing": _opt(_dict)}
MODEL: Dict[str, Check] = {  # the fields of `model` that later steps read (others are kept as they are)
    "name": _str, "input_shape": _shape, "output_shape": _shape, "weights_sha256": _str, "source": _str,
    "hls_source": _str, "hls_source_weights_sha256": _str, "precision": _str, "reuse_factor": _int(1, 1 << 20),
    "strategy": _str, "split": _opt(_dict), "batchnorm_folded": _opt(_dict)}
TOP: Dict[str, Check] = {
    "format": _int(0, 1 << 30), "board": _str, "model": _dict, "hls_defaults": _dict,
    "stages": _list_of(_dict, "stages"), "partitions": _list_of(_dict, "partitions"),
    "links": _list_of(_dict, "links"), "notes": _list_of(_str, "notes"), "hash": _str}


def _fields(d: dict, spec: Dict[str, Check], where: str, required=()) -> str:
    for k in required:
        if k not in d:
            return f"{where}{k}: missing"
    for k, check in spec.items():
        if k in d:
            bad = check(d[k])
            if bad:
                return f"{where}{k}: {bad}"
    return ""


def plan_dict_problem(d: Any) -> str:
    """'' when `d` (a parsed plan.json) has the shape of a plan, else one line naming the first bad field."""
    if not isinstance(d, dict):
        return f"must be a JSON object, got {_short(d)}"
    bad = _fields(d, TOP, "", ("model", "stages", "partitions", "links"))
    if bad:
        return bad
    bad = _fields(d["model"], MODEL, "model.", ("input_shape", "output_shape"))
    if bad:
        return bad
    for i, s in enumerate(d["stages"]):
        bad = _fields(s, STAGE, f"stages[{i}].", tuple(STAGE))
        if bad:
            return bad
    names = set()
    for i, p in enumerate(d["partitions"]):
        bad = _fields(p, PARTITION, f"partitions[{i}].", ("name", "stage", "kind", "layers", "input_shape",
                                                          "output_shape", "input_precision", "output_precision", "hls"))
        if bad:
            return bad
        if p["name"] in names:
            return f"partitions[{i}].name: {p['name']!r} is the name of an earlier partition too"
        names.add(p["name"])
    for i, c in enumerate(d["links"]):
        bad = _fields(c, LINK, f"links[{i}].", ("src", "dst", "shape", "dtype"))
        if bad:
            return bad
        if c.get("select") is not None:
            bad = _fields(c["select"], SELECT, f"links[{i}].select.", tuple(SELECT))
            if bad:
                return bad
            if c["select"]["start"] >= c["select"]["stop"]:
                return f"links[{i}].select: start {c['select']['start']} is not before stop {c['select']['stop']}"
    return ""
