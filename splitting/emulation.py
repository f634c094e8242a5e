"""Run a partition's compiled hls4ml emulation library (bit-accurate C simulation) through ctypes.

Standard library and numpy only, Python 3.8+: a virtual board's agent loads partitions with this module,
without hls4ml or TensorFlow. The library is the `.so` that hls4ml's `compile()` builds; its exported
`<project>_double(in, out)` runs one frame; a partition with several inputs or outputs exports
`<project>_double(in_1, ..., in_k, out_1, ..., out_m)`, and its frame is the flat concatenation of its inputs
(what its one input stream carries), its result the flat concatenation of its outputs.
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np
import numpy.ctypeslib as npc


class EmulationLib:
    """An hls4ml emulation library (the `.so` hls4ml's `compile()` builds) run through ctypes.

    `library` is the .so, `project` the hls4ml project name (its entry point is `<project>_double`), n_in /
    n_out the flat input and output sizes, or lists of the sizes of each input / output of a partition with
    several (their sums are then n_in / n_out). Loading raises OSError when the .so is missing or broken."""

    def __init__(self, library: str, project: str, n_in, n_out):
        self.library = str(library)
        self.project = project
        self.in_sizes = [int(n) for n in n_in] if isinstance(n_in, (list, tuple)) else [int(n_in)]
        self.out_sizes = [int(n) for n in n_out] if isinstance(n_out, (list, tuple)) else [int(n_out)]
        self.n_in = sum(self.in_sizes)
        self.n_out = sum(self.out_sizes)
        self._lib = ctypes.cdll.LoadLibrary(self.library)
        fn = getattr(self._lib, project + "_double")
        fn.restype = None
        fn.argtypes = [npc.ndpointer(ctypes.c_double, flags="C_CONTIGUOUS")] * (len(self.in_sizes) + len(self.out_sizes))
        self._fn = fn
        self._out = np.zeros(self.n_out, dtype=np.float64)  # one buffer, reused frame after frame
        edges = np.cumsum([0] + self.out_sizes)
        self._outs = [self._out[edges[i]:edges[i + 1]] for i in range(len(self.out_sizes))]  # views of it
        self._in_edges = np.cumsum([0] + self.in_sizes)

    def run(self, frame: np.ndarray) -> np.ndarray:
        """One frame in (any shape with n_in elements), a fresh flat float64 array of n_out out."""
        x = np.ascontiguousarray(np.asarray(frame, dtype=np.float64).reshape(-1))
        if x.size != self.n_in:
            raise ValueError(f"{self.project}: frame of {x.size} elements, library expects {self.n_in}")
        if len(self.in_sizes) == 1 and len(self.out_sizes) == 1:
            self._fn(x, self._out)
        else:
            e = self._in_edges
            ins = [np.ascontiguousarray(x[e[i]:e[i + 1]]) for i in range(len(self.in_sizes))]
            self._fn(*ins, *self._outs)
        return self._out.copy()

    def predict(self, batch: np.ndarray, out_shape: Sequence[int] = ()) -> np.ndarray:
        """Run a batch (n, ...) frame by frame; returns float64 (n, n_out), or (n,) + out_shape when given."""
        batch = np.asarray(batch)
        n = batch.shape[0]
        flat = batch.reshape(n, -1)
        out = np.empty((n, self.n_out), dtype=np.float64)
        for i in range(n):
            out[i] = self.run(flat[i])
        return out.reshape((n,) + tuple(out_shape)) if out_shape else out
