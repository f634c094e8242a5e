"""verify's hls4ml emulations, run while the builds are still going (the cold path, issue 21).

The whole model's emulation and every partition's are traced runs (diagnose.traced_run: each in a child
process) on the same batch. The batch is cut into `chunks` slices of consecutive frames; the run of one
model on one slice is a task, started in a pool of `workers` threads as soon as its library is built
(`ready`: hls.Builds.ready) and, for a partition, as soon as the partitions it reads from have run on that
slice. So the whole model's emulation starts while the partitions still compile, and the two cores share
the emulations evenly instead of waiting for the longer of two serial runs. The slices of each model are put
back together in order (`result`): the same frames through the same library, so the outputs and traces are
those of one run over the whole batch (every frame is computed from its own input alone: test_cold_verify
checks this on a convolutional model against one unsliced run).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional

import numpy as np

from .chain import partition_input, sources_of
from .diagnose import TracedRun, traced_run
from .plan import HOST, Plan


def emulation_workers() -> int:
    """How many emulations run at once: one per core (each is one single-threaded child process of a few
    MiB)."""
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def merged(runs: List[TracedRun]) -> TracedRun:
    """One TracedRun of the slices `runs` of a batch, in order (batch, outputs and every trace concatenated)."""
    if len(runs) == 1:
        return runs[0]
    return TracedRun(np.concatenate([r.batch for r in runs]), np.concatenate([r.out for r in runs]), runs[0].layers,
                     {k: np.concatenate([r.trace[k] for r in runs]) for k in runs[0].trace})


class EmulationSchedule:
    """The traced emulations of the whole model (name None) and of every partition of `plan` on the batch
    `x`, started as their builds end (`ready`: {name: Future done with the project folder, or with the
    build's error}). `result(name)` waits for one model's run over the whole batch (TracedRun) and raises
    the error of its build or of its emulation (EmulationCrash) when there is one. `close()` cancels what
    has not started (a caller that gives up)."""

    def __init__(self, plan: Plan, x: np.ndarray, ready: Dict[Optional[str], Future], workers: int = None,
                 chunks: int = None):
        self.plan, self.x = plan, np.asarray(x)
        workers = workers or emulation_workers()
        n = max(1, min(chunks or workers, len(self.x)))
        self.slices = [s for s in np.array_split(np.arange(len(self.x)), n) if len(s)]
        self.names: List[Optional[str]] = [None] + [p.name for p in plan.ordered_partitions()]
        self._readers = {name: [q for q in self.names[1:] if name in sources_of(plan, q)] for name in self.names[1:]}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulation")
        self._runs: Dict[Optional[str], List[Optional[TracedRun]]] = {k: [None] * len(self.slices) for k in self.names}
        self._outputs = [{HOST: self.x[s]} for s in self.slices]  # per slice: what each partition gave
        self._started = set()
        self._done = {k: Future() for k in self.names}
        self._ready = ready
        for name in self.names:
            ready[name].add_done_callback(lambda f, name=name: self._built(name, f))

    def result(self, name: Optional[str], timeout: float = None) -> TracedRun:
        """The traced run of `name` (None: the whole model) over the whole batch, once every slice ran
        (concurrent.futures.TimeoutError after `timeout` seconds when given)."""
        return self._done[name].result(timeout)

    def started(self, name: Optional[str]) -> int:
        """How many slices of `name`'s emulation have started."""
        with self._lock:
            return sum(1 for k, _ in self._started if k == name)

    def close(self) -> None:
        """Cancel the runs not started yet and wait for those under way (the caller gave up)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _built(self, name, f: Future) -> None:
        if f.exception() is not None:
            self._fail(name, f.exception())
            return
        for i in range(len(self.slices)):
            self._start_if_ready(name, i)

    def _start_if_ready(self, name, i: int) -> None:
        with self._lock:
            if (name, i) in self._started or self._done[name].done() or not self._ready[name].done():
                return
            if name is not None and not all(src in self._outputs[i] for src in sources_of(self.plan, name)):
                return
            self._started.add((name, i))
            inp = self.x[self.slices[i]] if name is None else partition_input(self.plan, name, self._outputs[i])
        try:
            self._pool.submit(self._run, name, i, inp)
        except RuntimeError:  # the pool was closed: the caller gave up
            pass

    def _run(self, name, i: int, inp: np.ndarray) -> None:
        try:
            run = traced_run(self.plan, name, inp)
        except BaseException as e:  # EmulationCrash, or a library that cannot be read: the caller's to raise
            self._fail(name, e)
            return
        with self._lock:
            self._runs[name][i] = run
            if name is not None:
                self._outputs[i][name] = run.out
            if all(r is not None for r in self._runs[name]) and not self._done[name].done():
                self._done[name].set_result(merged(self._runs[name]))
        for reader in self._readers.get(name, []):
            self._start_if_ready(reader, i)

    def _fail(self, name, err: BaseException) -> None:
        """`name` cannot run: it and every partition downstream of it fail with `err`."""
        todo = [name]
        while todo:
            k = todo.pop()
            with self._lock:
                if self._done[k].done():
                    continue
                self._done[k].set_exception(err)
            todo += self._readers.get(k, [])
