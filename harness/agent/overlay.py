"""The overlay backend of a real PYNQ-Z2: the partition's bitstream and its AXI DMA buffers (pynq), in two modes.

"values": the agent's assembled input goes into the input DMA buffer and the output buffer comes back as
values, one vectorised step each way. "raw": the accelerator takes and gives the links' AXI-stream words as
they travel on the wire, so the agent receives a frame's payload straight into an input buffer and sends the
output buffer as it is (DmaSlot). Shipped to the board with the agent (Python 3.8, stdlib + numpy; `pynq`
is imported only when a backend is made: on the board, or the stand-in of sim_tests/agent/pynq_standin).
"""
from __future__ import annotations

import os

import numpy as np

from harness.agent.agent_config import AgentConfigError, config_path
from splitting.contract import ContractError


class DmaSlot:
    """One frame's pair of DMA buffers in raw-word mode, with byte views of them (what the sockets use); `outs`
    is the frame's outputs as the agent's send step takes them, (outview,)."""

    __slots__ = ("inbuf", "outbuf", "inview", "outview", "outs")

    def __init__(self, inbuf, outbuf):
        self.inbuf, self.outbuf = inbuf, outbuf
        self.inview = memoryview(inbuf).cast("B")  # recv_into this: the payload lands where the DMA reads it
        self.outview = memoryview(outbuf).cast("B")  # sendmsg this: the DMA's output goes out as it is
        self.outs = (self.outview,)


class OverlayBackend:
    """A real PYNQ-Z2: the partition's bitstream, its AXI DMA, and DMA buffers allocated once.

    Two modes (the backend config's "io"):
    - "values" (default): buffers of `in_dtype` / `out_dtype` (float32, or integers holding raw ap_fixed
      words); `run` converts the assembled input into the input buffer and the output buffer into values,
      one vectorised step each way (what several links or float buffers need).
    - "raw": the accelerator takes and gives the links' AXI-stream words exactly as they travel on the wire
      (`Contract.encode`): one link in, one out, no `select`, buffers of the links' word containers whose
      byte size is the contracts' payload_bytes. The agent receives a frame's payload straight into an input
      buffer and sends the output buffer as it is (`slots`, `run_raw`): no decode, no encode, no copy.
    Raises AgentConfigError when the bitstream is missing or "raw" does not fit the links."""

    kind = "overlay"
    forward_bytes = False

    def __init__(self, cfg, base, inputs, outputs, slots=0):
        from pynq import Overlay, allocate  # only on a board (tests: a stand-in on sys.path)

        self.raw = cfg.get("io", "values") == "raw"
        if cfg.get("io", "values") not in ("values", "raw"):
            raise AgentConfigError("overlay backend io %r: use values or raw" % (cfg.get("io"),))
        if self.raw:
            self.in_bytes, in_words = _raw_words(inputs, outputs, "in")
            self.out_bytes, out_words = _raw_words(outputs, inputs, "out")
        bit = config_path(cfg["bitfile"], base)
        if not os.path.isfile(bit):
            raise AgentConfigError("bitstream %s not found: upload the partition's artifact" % bit)
        self.overlay = Overlay(bit)  # pynq finds the .hwh beside the .bit
        dma = self.overlay
        for name in cfg.get("dma", "hier_0.axi_dma_0").split("."):
            dma = getattr(dma, name)
        self.send, self.recv = dma.sendchannel, dma.recvchannel
        if self.raw:
            # Every frame inside the agent owns one slot (input and output buffer) from its receipt until its
            # output was sent; then the slot is free again. So the DMA never reads an input buffer a socket
            # writes, and no output buffer is overwritten before it left. `slots` covers what may be inside
            # at once (both queues full, one frame computing, one sending, each connection's next receipt).
            self.slots = [DmaSlot(allocate(shape=(in_words[0],), dtype=in_words[1]),
                                  allocate(shape=(out_words[0],), dtype=out_words[1])) for _ in range(slots)]
            return
        self.in_dtype = np.dtype(cfg.get("in_dtype", "float32"))
        self.out_dtype = np.dtype(cfg.get("out_dtype", "float32"))
        self.inbuf = allocate(shape=(int(cfg["n_in"]),), dtype=self.in_dtype)
        self.outbuf = allocate(shape=(int(cfg["n_out"]),), dtype=self.out_dtype)
        self.out_fixed = outputs[0].fixed if outputs else None
        self.in_fixed = inputs[0].fixed if inputs else None
        self.run_payloads = self._plan_direct(inputs, outputs)

    def _plan_direct(self, inputs, outputs):
        """`run_payloads` when the links' bytes map onto the buffers one vectorised step per link: 1-D links of
        one element type concatenated in index order into the input buffer (the assembled input), integer
        buffers of that type's raw words (or float buffers), and outgoing links of the partition's output
        type; None otherwise (then the agent decodes, assembles, runs and encodes)."""
        if not inputs or not outputs or any(len(c.shape) != 1 or c.dtype != inputs[0].dtype for c in inputs) \
                or any(c.dtype != outputs[0].dtype for c in outputs):
            return None
        if sum(c.elements for c in inputs) != len(self.inbuf) or (self.in_dtype.kind != "f" and self.in_fixed is None) \
                or (self.out_dtype.kind != "f" and self.out_fixed is None):
            return None
        off, parts = 0, []
        for c in inputs:  # inputs are in index order: the assembled input's order
            parts.append((c, off, off + c.elements))
            off += c.elements
        self.in_parts = parts
        self.out_links = outputs
        return self._run_payloads

    def _run_payloads(self, payloads, output_shape):
        """Payloads of the incoming links (index order) -> payloads of the outgoing links, through the FPGA.
        Integer buffers take the wire's raw words as they are (sign-extended from their containers); float
        buffers the decoded values. ContractError for a payload of the wrong size (before any DMA)."""
        inbuf = self.inbuf
        for (c, a, b), p in zip(self.in_parts, payloads):
            inbuf[a:b] = c.decode(p) if self.in_dtype.kind == "f" else _wire_words(c, p)
        self.send.transfer(inbuf)
        self.recv.transfer(self.outbuf)
        self.send.wait()
        self.recv.wait()
        out = self.outbuf
        if self.out_dtype.kind == "f":
            y = out.astype(np.float64).reshape(output_shape)
            return [c.encode(c.take(y)) for c in self.out_links]
        raw = self.out_fixed.overflow(out.astype(np.int64)).reshape(output_shape)  # as encode would bring it in
        return [_words_bytes(c, c.take(raw)) for c in self.out_links]

    def run_raw(self, slot):
        """One frame through the FPGA in raw-word mode: the input buffer's words to the accelerator, its words
        into the output buffer (blocking until both transfers end); returns the slot (the frame's outputs). The driver flushes the input buffer from
        the CPU caches before its transfer and invalidates the output buffer after the wait."""
        recv = self.recv
        recv.transfer(slot.outbuf)  # armed first: the accelerator may answer as soon as its input is in
        self.send.transfer(slot.inbuf)
        self.send.wait()
        recv.wait()
        return slot

    def run(self, x):
        """One frame (n_in elements) through the FPGA over AXI DMA (blocking until both transfers end);
        a flat float64 array of n_out elements. Integer buffers carry raw ap_fixed words, converted with the
        links' contracts."""
        x = np.asarray(x).reshape(-1)
        if self.in_dtype.kind == "f":
            self.inbuf[:] = x
        else:  # the wrapper takes raw ap_fixed words: quantise as the contract does
            self.inbuf[:] = self.in_fixed.to_raw(x).astype(self.in_dtype)
        self.send.transfer(self.inbuf)
        self.recv.transfer(self.outbuf)
        self.send.wait()
        self.recv.wait()
        if self.out_dtype.kind == "f":
            return self.outbuf.astype(np.float64)
        return self.out_fixed.from_raw(self.outbuf.astype(np.int64))


def _wire_words(c, payload):
    """The raw fixed-point words of a link's payload (int64, its elements; checked size, as Contract.decode)."""
    p = c.packing
    if len(payload) != c.payload_bytes:
        raise ContractError("link %s->%s: payload of %d bytes, contract says %d"
                                      % (c.src, c.dst, len(payload), c.payload_bytes))
    bits, ft = p.element_bits, c.fixed
    if ft.signed:
        words = np.frombuffer(payload, dtype="<i%d" % (bits // 8), count=c.elements)
        shift = bits - ft.width
        return (words.astype(np.int64) << shift) >> shift if shift else words
    words = np.frombuffer(payload, dtype="<u%d" % (bits // 8), count=c.elements)
    return words & ((1 << ft.width) - 1) if bits > ft.width else words


def _words_bytes(c, raw):
    """Raw words in the link's range -> the link's payload (Contract.encode's bytes for these values)."""
    p = c.packing
    words = np.asarray(raw).reshape(-1).astype("<u%d" % (p.element_bits // 8))  # two's complement in the container
    slots = p.beats * p.elements_per_beat
    if slots != words.size:
        padded = np.zeros(slots, dtype=words.dtype)
        padded[:words.size] = words
        words = padded
    return words.tobytes()


def _raw_words(links, others, side):
    """(payload bytes, (words, numpy dtype)) of the one link on this side, for raw-word DMA buffers whose
    byte size is the contract's payload_bytes; AgentConfigError when raw words cannot carry the links."""
    if len(links) != 1 or len(others) != 1:
        n_in, n_out = (len(links), len(others)) if side == "in" else (len(others), len(links))
        raise AgentConfigError("overlay io raw needs one link in and one out (this partition has %d in, %d out): "
                               "use io values" % (n_in, n_out))
    c = links[0]
    if c.select is not None:
        raise AgentConfigError("overlay io raw: the outgoing link %s->%s takes a slice of the output: use io values"
                               % (c.src, c.dst))
    p = c.packing
    size = p.element_bits // 8
    dtype = np.dtype("<f4") if c.fixed is None else np.dtype("<i%d" % size)
    if c.payload_bytes % size:
        raise AgentConfigError("overlay io raw: payload of %d bytes is not whole %d-byte words"
                               % (c.payload_bytes, size))
    return c.payload_bytes, (c.payload_bytes // size, dtype)
