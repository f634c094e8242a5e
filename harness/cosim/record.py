"""The RTL cosimulation's result kept in the plan's folder (`plan/cosim.json`), so that `bench`, `run` and the
demo can show the FPGA compute the RTL measured beside a virtual board's CPU time.

    write(result, plan.root)          # `splitrack cosim` does this after every run
    stored = read(plan)               # StoredCosim: per partition its cycles, or why there are none

The file is untrusted input (a plan folder comes from anywhere): `read` checks every field it uses and turns
a file it cannot vouch for (unreadable, another plan version, a failed cosimulation) into a reason with the
command that makes a good one, never into figures.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

KIND = "splitrack-cosim"
VERSION = 1
FILE = "cosim.json"
DEFAULT_CLOCK_NS = 10.0  # the PYNQ-Z2 block design's 100 MHz, hls4ml's default clock_period (splitting/split.py)


def write(result, root: Path) -> Path:
    """Write a CosimResult (harness.cosim.cosim) as `root`/cosim.json, with its kind, version and time (UTC);
    returns the path. The result's plan_hash is the plan's hash after the run (FIFO depths written or not)."""
    path = Path(root) / FILE
    doc = {"kind": KIND, "version": VERSION, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "result": result.to_dict()}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def command(plan) -> str:
    """The command that cosimulates `plan` and writes its cosim.json."""
    return f"splitrack cosim {plan.root if plan.root is not None else 'PLAN'}"


def plan_clock_ns(plan) -> Optional[float]:
    """The plan's clock period in ns (hls_defaults' clock_period, hls4ml's default 10 ns when absent); None
    when the plan gives one that is not a positive number."""
    v = (plan.hls_defaults or {}).get("clock_period", DEFAULT_CLOCK_NS)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


@dataclass
class PartitionCycles:
    """What the RTL cosimulation measured of one partition, in clock cycles (None: not measured), and the
    same at the plan's clock in microseconds.

    latency        last input beat accepted to first output beat (first frame, no stalls)
    frame_latency  first input beat to last output beat (first frame): what a board's compute time spans
    ii             cycles between successive output frames, saturated input (median)
    """

    partition: str
    latency: Optional[float]
    frame_latency: Optional[float]
    ii: Optional[float]
    clock_ns: Optional[float]
    sim: str

    def us(self, cycles: Optional[float]) -> Optional[float]:
        """`cycles` at the plan's clock, in microseconds (None when either is unknown)."""
        return None if cycles is None or self.clock_ns is None else cycles * self.clock_ns / 1e3

    def to_dict(self) -> dict:
        """JSON-ready: the cycles, the clock (ns) and the same figures in us."""
        return {"source": f"RTL cosimulation ({self.sim})", "clock_ns": self.clock_ns,
                "latency_cycles": self.latency, "frame_latency_cycles": self.frame_latency, "ii_cycles": self.ii,
                "latency_us": self.us(self.latency), "frame_latency_us": self.us(self.frame_latency),
                "ii_us": self.us(self.ii)}


@dataclass
class StoredCosim:
    """The cosimulation figures a plan's folder holds: `figures` per partition when there is a good result
    for this very plan; otherwise empty, and `missing` says why with the command that makes one."""

    figures: Dict[str, PartitionCycles] = field(default_factory=dict)
    missing: str = ""


def _cycles(v, where: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{where} is {v!r}, not a number of cycles")
    return float(v)


def read(plan) -> StoredCosim:
    """The cosimulation figures of `plan` (a splitting.plan.Plan) from its folder's cosim.json. A missing file
    gives missing="not cosimulated (run: splitrack cosim PLAN)"; so does, with the reason, a file this
    splitrack cannot read, one written for another version of the plan (its hash differs), or one whose
    cosimulation failed its checks. Never raises for a bad file."""
    cmd = command(plan)
    if plan.root is None or not (Path(plan.root) / FILE).is_file():
        return StoredCosim(missing=f"not cosimulated (run: {cmd})")
    path = Path(plan.root) / FILE
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise ValueError("not a splitrack cosim result")
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}, this splitrack reads {VERSION}")
        res = doc["result"]
        if not isinstance(res, dict) or not isinstance(res.get("partitions"), dict):
            raise ValueError("no partitions")
        plan_hash, ok, sim = res["plan_hash"], res["ok"], str(res.get("sim", "?"))
        if not isinstance(plan_hash, str) or not isinstance(ok, bool):
            raise ValueError("plan_hash or ok of the wrong type")
        if plan_hash != plan.hash:
            return StoredCosim(missing=f"not cosimulated in this version of the plan ({path} is of plan {plan_hash}, "
                                       f"the plan is {plan.hash}; run: {cmd})")
        if not ok:
            return StoredCosim(missing=f"the cosimulation failed its checks (see {path}; run: {cmd})")
        clock = plan_clock_ns(plan)
        figures = {}
        for name, p in res["partitions"].items():
            if not isinstance(p, dict):
                raise ValueError(f"partition {name!r} is not an object")
            figures[str(name)] = PartitionCycles(str(name), _cycles(p.get("latency"), f"{name}.latency"),
                                                 _cycles(p.get("frame_latency"), f"{name}.frame_latency"),
                                                 _cycles(p.get("ii"), f"{name}.ii"), clock, sim)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        return StoredCosim(missing=f"not cosimulated: {path} is unreadable ({type(e).__name__}: {e}; run: {cmd})")
    return StoredCosim(figures)
