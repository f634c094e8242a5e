"""Plans of identity partitions, for transport tests and benchmarks with passthrough agents (a test helper:
`from identity_plan import identity_plan`; benchmarks put sim_tests/ on their path)."""
from __future__ import annotations

from typing import Dict

from splitting.contract import Contract, Select
from splitting.plan import Partition, Plan, Stage


def identity_plan(stages: int = 3, shape=(64,), dtype: str = "ap_fixed<16,6>", fan: int = 0) -> Plan:
    """A plan of identity partitions, for transport tests and benchmarks with passthrough agents.

    stages: a chain host -> s0 -> s1 -> ... -> host. fan > 1 adds, after s0, a stage of `fan` parallel
    partitions each taking a slice of s0's output (along the last axis), and a stage that concatenates them:
    the neuron-split wiring (select on the producer, concat on the consumer). stages=0 with fan > 1: the host
    itself scatters the slices to the parallel partitions and concatenates their outputs."""
    shape = tuple(int(s) for s in shape)
    parts: Dict[str, Partition] = {}
    stage_list = []
    links = []

    def add(name: str, stage: int, kind: str, in_shape, out_shape) -> None:
        parts[name] = Partition(name=name, stage=stage, kind=kind, layers=[], input_shape=list(in_shape),
                                output_shape=list(out_shape), input_precision=dtype, output_precision=dtype, hls={})

    prev = "host"
    idx = 0
    for i in range(stages):
        name = f"s{i}"
        add(name, idx, "layers", shape, shape)
        stage_list.append(Stage(idx, "layers", [name]))
        links.append(Contract(prev, name, shape, dtype))
        prev, idx = name, idx + 1
        if i == 0 and fan > 1:
            w, part_shape, names = _slices(shape, fan)
            for k, n in enumerate(names):
                add(n, idx, "neuron", shape, part_shape)
                links.append(Contract(prev, n, part_shape, dtype, select=Select(len(shape) - 1, k * w, (k + 1) * w)))
            stage_list.append(Stage(idx, "neuron", names))
            idx += 1
            join = "join"
            add(join, idx, "layers", shape, shape)
            for k, n in enumerate(names):
                links.append(Contract(n, join, part_shape, dtype, combine="concat", axis=-1, index=k, count=fan))
            stage_list.append(Stage(idx, "layers", [join]))
            prev, idx = join, idx + 1
    if stages == 0 and fan > 1:
        w, part_shape, names = _slices(shape, fan)
        for k, n in enumerate(names):
            add(n, 0, "neuron", part_shape, part_shape)
            links.append(Contract("host", n, part_shape, dtype, select=Select(len(shape) - 1, k * w, (k + 1) * w)))
            links.append(Contract(n, "host", part_shape, dtype, combine="concat", axis=-1, index=k, count=fan))
        stage_list.append(Stage(0, "neuron", names))
    else:
        links.append(Contract(prev, "host", shape, dtype))
    model = {"name": "identity", "input_shape": list(shape), "output_shape": list(shape), "output_precision": dtype}
    plan = Plan(model=model, stages=stage_list, partitions=parts, links=links)
    plan.check()
    return plan


def _slices(shape, fan: int):
    """(slice width, a slice's shape, the parallel partitions' names) of `fan` slices along the last axis."""
    width = shape[-1]
    if width % fan:
        raise ValueError(f"fan {fan} must divide the last axis {width}")
    w = width // fan
    return w, shape[:-1] + (w,), [f"n{k}" for k in range(fan)]
