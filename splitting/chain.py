"""Running a plan stage by stage on the host: each partition's input is assembled from its incoming links
exactly as a board would assemble it (contract `select`, then concatenation in link order)."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from .contract import assemble
from .plan import HOST, Plan

Runner = Callable[[str, np.ndarray], np.ndarray]  # (partition name, batch) -> batch


def run_chain(plan: Plan, x: np.ndarray, runner: Runner, keep: Dict[str, np.ndarray] = None) -> np.ndarray:
    """Outputs of the whole plan for the batch `x`; `keep`, if given, receives every partition's output."""
    outputs: Dict[str, np.ndarray] = {HOST: np.asarray(x)}
    for part in plan.ordered_partitions():
        outputs[part.name] = np.asarray(runner(part.name, partition_input(plan, part.name, outputs)))
    final = plan.output_links
    result = assemble(final, [c.take(outputs[c.src]) for c in final])
    if keep is not None:
        keep.update({k: v for k, v in outputs.items() if k != HOST})
    return result


def partition_input(plan: Plan, name: str, outputs: Dict[str, np.ndarray]) -> np.ndarray:
    """The batch partition `name` reads, assembled from `outputs` ({HOST: the plan's input batch, partition
    name: its output batch}; every partition it reads from must be there) as a board assembles it."""
    links = plan.inputs_of(name)
    return assemble(links, [c.take(outputs[c.src]) for c in links])  # selects are on negative axes: batch-safe


def sources_of(plan: Plan, name: str) -> set:
    """The partitions partition `name` reads from (the host not counted)."""
    return {c.src for c in plan.inputs_of(name)} - {HOST}


def keras_runner(models) -> Runner:
    """A Runner that runs partition `name` with its Keras sub-model (`models[name]`, float). A sub-model with
    several inputs gets its batch as the flat concatenation of them (what `assemble` builds), and gives the
    flat concatenation of its outputs, as its emulation does."""
    def run(name: str, x: np.ndarray) -> np.ndarray:
        m = models[name]
        if len(m.inputs) > 1:
            sizes = [int(np.prod(t.shape[1:])) for t in m.inputs]
            edges = np.cumsum([0] + sizes)
            x = [x[:, edges[i]:edges[i + 1]].reshape((len(x),) + tuple(int(d) for d in t.shape[1:]))
                 for i, t in enumerate(m.inputs)]
        y = m.predict(x, verbose=0, batch_size=256)
        if isinstance(y, (list, tuple)):
            y = np.concatenate([np.asarray(o).reshape(len(o), -1) for o in y], axis=1)
        return y

    return run


def emulation_runner(plan: Plan, isolated: bool = False) -> Runner:
    """Each partition's compiled hls4ml emulation; `isolated` runs it in a child process, so that a crash
    of its C++ code is a one-line error naming the partition (emulation_guard)."""
    from .hls import emulation

    def run(name: str, x: np.ndarray) -> np.ndarray:
        p = plan.partition(name)
        if isolated:
            from .emulation_guard import predict_isolated

            return predict_isolated(emulation(plan, name), x, p.output_shape,
                                    what=f"partition {name} (layers {', '.join(p.layers)})")
        from .quiet_tensorflow import library_output

        with library_output(f"hls4ml emulation of partition {name}"):  # its C++ may print (hls::stream warnings)
            return emulation(plan, name).predict(x, p.output_shape)

    return run
