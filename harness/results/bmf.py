"""Bencher Metric Format (BMF) JSON of one run, so that a lab running Bencher can ingest splitrack's results
(`bencher run --adapter json --file run.bmf.json`).

BMF is {benchmark name: {measure slug: {"value": v, "lower_value": lo, "upper_value": hi}}}. Bencher's
built-in measures are `latency` in nanoseconds and `throughput` in operations per second; accuracy goes
in a measure of its own (`accuracy`, a fraction), which Bencher creates on first sight.

Benchmark names: "LABEL/MODE/HOP" (e.g. "digits-fc/single/board s1", "digits-fc/stream/e2e"),
"LABEL/cpu/NAME" for the CPU reference, "LABEL/accuracy/WHO". Latency value: the p50, upper_value: the p99
(no lower_value: splitrack keeps no lower percentile worth alerting on).
"""
from __future__ import annotations

from typing import Dict

from harness.results.history import History, RunInfo

NS_PER_US = 1000.0


def run_bmf(history: History, run: RunInfo) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The BMF document of one run (latency in ns)."""
    vals = history.values(run.run_id)
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for (metric, hop), v in sorted(vals.items()):
        parts = metric.split(" ")
        if len(parts) == 2 and parts[1] == "p50" and parts[0] != "cpu":
            name = f"{run.label}/{parts[0]}/{hop}"
            m = {"value": v * NS_PER_US}
            if (f"{parts[0]} p99", hop) in vals:
                m["upper_value"] = vals[(f"{parts[0]} p99", hop)] * NS_PER_US
            out.setdefault(name, {})["latency"] = m
        elif metric == "cpu p50":
            m = {"value": v * NS_PER_US}
            if ("cpu p99", hop) in vals:
                m["upper_value"] = vals[("cpu p99", hop)] * NS_PER_US
            out.setdefault(f"{run.label}/cpu/{hop}", {})["latency"] = m
        elif len(parts) == 2 and parts[1] == "throughput":
            out.setdefault(f"{run.label}/{parts[0]}/{hop}", {})["throughput"] = {"value": v}
        elif metric == "accuracy":
            out.setdefault(f"{run.label}/accuracy/{hop}", {})["accuracy"] = {"value": v}
        elif metric.startswith("pytest ") and metric.endswith(" median"):
            out.setdefault(f"{run.label}/{metric[len('pytest '):-len(' median')]}/{hop}", {})["latency"] = \
                {"value": v * NS_PER_US}
    return out
