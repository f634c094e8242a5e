"""Run a partition's compiled hls4ml emulation library (bit-accurate C simulation) through ctypes.

Standard library and numpy only, Python 3.8+: a virtual board's agent loads partitions with this module,
without hls4ml or TensorFlow. The library is the `.so` that hls4ml's `compile()` builds; its exported
`<project>_double(in, out)` runs one frame.
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np
import numpy.ctypeslib as npc


class EmulationLib:
    """An hls4ml emulation library (the `.so` hls4ml's `compile()` builds) run through ctypes.

    `library` is the .so, `project` the hls4ml project name (its entry point is `<project>_double`), n_in /
    n_out the flat input and output sizes. Loading raises OSError when the .so is missing or broken."""

    def __init__(self, library: str, project: str, n_in: int, n_out: int):
        self.library = str(library)
        self.project = project
        self.n_in = int(n_in)
        self.n_out = int(n_out)
        self._lib = ctypes.cdll.LoadLibrary(self.library)
        fn = getattr(self._lib, project + "_double")
        fn.restype = None
        fn.argtypes = [npc.ndpointer(ctypes.c_double, flags="C_CONTIGUOUS")] * 2
        self._fn = fn
        self._out = np.zeros(self.n_out, dtype=np.float64)  # one buffer, reused frame after frame

    def run(self, frame: np.ndarray) -> np.ndarray:
        """One frame in (any shape with n_in elements), a fresh flat float64 array of n_out out."""
        x = np.ascontiguousarray(np.asarray(frame, dtype=np.float64).reshape(-1))
        if x.size != self.n_in:
            raise ValueError(f"{self.project}: frame of {x.size} elements, library expects {self.n_in}")
        self._fn(x, self._out)
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
