"""Stand-in for the parts of PYNQ the board agent's overlay backend uses: `allocate`, `Overlay`, and an AXI DMA
whose channels behave like pynq.lib.dma's simple-mode `_SDMAChannel` (transfer(array, start, nbytes) posts a
transfer and needs a started, idle channel; the send channel flushes its buffer from the CPU caches before the
transfer, the receive channel invalidates its buffer after `wait`).

NOT shipped to boards: tests and benchmarks/agent_overhead.py put this folder on the agents' PYTHONPATH.

The "bitstream" is a JSON file naming the accelerator between the DMA's two streams:
    {"accelerator": "copy"}
        the output words are the input words (the benchmark: the agent's data handling, no compute)
    {"accelerator": "emulation", "library": ..., "project": ..., "n_in": N, "n_out": M,
     "in": Contract.to_dict(), "out": Contract.to_dict()}
        the partition's hls4ml emulation library on the raw words: decoded with the incoming link's contract,
        run, encoded with the outgoing link's, as an accelerator taking and giving ap_fixed words would
    optional "log": a file that gets one line per frame the accelerator computed ("<in bytes> <out bytes>")
"""
import json
import types

import numpy as np

from .buffer import ACTIVE_DEVICE, PynqBuffer, allocate  # noqa: F401  (pynq exports allocate at the top)

__all__ = ["allocate", "Overlay", "PynqBuffer"]


class _Channel:
    """One direction of a simple-mode AXI DMA."""

    def __init__(self, dma, send):
        self.dma, self.send = dma, send
        self.running = True
        self.idle = True
        self._active_buffer = None
        self.transferred = 0

    def transfer(self, array, start=0, nbytes=0):
        if not self.running:
            raise RuntimeError("DMA channel not started")
        if not self.idle:
            raise RuntimeError("DMA channel not idle")
        if array.__class__ is not PynqBuffer and not isinstance(array, PynqBuffer):
            # the real driver needs array.physical_address
            raise AttributeError("'%s' object has no attribute 'physical_address': allocate DMA buffers with "
                                 "pynq.allocate" % type(array).__name__)
        if not nbytes:
            nbytes = array.nbytes - start
        if self.send:
            array.flush()
        self.idle = False
        self._active_buffer = (array, start, nbytes)
        self.dma._posted()

    def wait(self):
        if not self.running:
            raise RuntimeError("DMA channel not started")
        if not self.idle:
            raise RuntimeError("DMA transfer never completes: the other channel has no transfer posted")
        if not self.send and self._active_buffer is not None:
            self._active_buffer[0].invalidate()


class _DMA:
    """An AXI DMA whose MM2S stream feeds the accelerator and whose S2MM stream takes its output: once both
    channels have a transfer posted, the accelerator runs and both become idle again."""

    def __init__(self, spec):
        self.spec = spec
        self.sendchannel, self.recvchannel = _Channel(self, True), _Channel(self, False)
        kind = spec.get("accelerator", "copy")
        if kind == "copy":
            self.compute = self._copy
        elif kind == "emulation":
            from splitting import contract, emulation  # as the agent's folder has them (harness/agent/files.py)

            self.lib = emulation.EmulationLib(spec["library"], spec["project"], spec["n_in"], spec["n_out"])
            self.c_in = contract.Contract.from_dict(spec["in"])
            self.c_out = contract.Contract.from_dict(spec["out"])
            self.compute = self._emulate
        else:
            raise ValueError("stand-in accelerator %r: copy or emulation" % (kind,))
        self.log = spec.get("log")

    def _posted(self):
        s, r = self.sendchannel, self.recvchannel
        if s.idle or r.idle:
            return
        (src, s0, n_in), (dst, d0, n_out) = s._active_buffer, r._active_buffer
        src_b, dst_b = _bytes(src), _bytes(dst)
        if s0 or n_in != len(src_b):
            src_b = src_b[s0:s0 + n_in]
        if d0 or n_out != len(dst_b):
            dst_b = dst_b[d0:d0 + n_out]
        self.compute(src_b, dst_b)
        s.transferred, r.transferred = n_in, n_out
        s.idle = r.idle = True
        if self.log:
            with open(self.log, "a") as f:
                f.write("%d %d\n" % (n_in, n_out))

    @staticmethod
    def _copy(src, dst):
        if len(src) == len(dst):
            dst[:] = src
        else:
            n = min(len(src), len(dst))
            dst[:n] = src[:n]

    def _emulate(self, src, dst):
        x = self.c_in.decode(bytes(src))
        y = self.lib.run(np.asarray(x, np.float64).reshape(-1))
        dst[:] = self.c_out.encode(np.asarray(y).reshape(self.c_out.shape))


def _bytes(buf):
    """A byte memoryview of a whole buffer, made once per buffer (the stand-in's "bus": what the DMA moves)."""
    mv = buf.__dict__.get("_standin_bytes")
    if mv is None:
        mv = buf.__dict__["_standin_bytes"] = memoryview(buf.reshape(-1)).cast("B")
    return mv


class Overlay:
    """Overlay(bitfile): the stand-in bitstream's DMA at `hier_0.axi_dma_0` (the agent's default path)."""

    def __init__(self, bitfile):
        with open(bitfile) as f:
            spec = json.load(f)
        self.bitfile_name = bitfile
        self.hier_0 = types.SimpleNamespace(axi_dma_0=_DMA(spec))
