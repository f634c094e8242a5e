"""The agent's backends (what computes a frame) and the switch between them, keyed by the config's backend kind.

- "passthrough": transport tests; the output is the assembled input (or the payload bytes, forwarded).
- "emulation": the partition's hls4ml C emulation library (splitting/emulation.py; virtual boards).
- "fast": virtual boards; the bit-exact fast model (fast_model.py), checked against the emulation at start.
- "overlay": a real PYNQ-Z2; the partition's bitstream and AXI DMA buffers (overlay.py, imports pynq).

Each backend has `kind`, `forward_bytes` (payload bytes forwarded unchanged, nothing decoded) and `run(x)`; an
overlay in raw-word mode has `raw`, `slots` and `run_raw(slot)`, one in values mode may map the links' bytes to
its buffers itself (`run_payloads`). The fast and overlay modules are imported only when a config asks for them:
the agents of other backends do not load them at their start. Shipped with the agent (Python 3.8, numpy).
"""
from __future__ import annotations

import os

import numpy as np

from harness.agent.agent_config import AgentConfigError, config_path


class PassthroughBackend:
    """Returns its input unchanged (as float64); with one link in and one out of the same encoding and no
    `decode`, `forward_bytes` lets the agent forward the payload bytes without decoding them."""

    kind = "passthrough"

    def __init__(self, cfg, inputs, outputs):
        self.forward_bytes = (not cfg.get("decode", False) and len(inputs) == 1 and len(outputs) == 1
                              and outputs[0].select is None and _same_encoding(inputs[0], outputs[0]))

    def run(self, x):
        """`x` as a float64 array of the same shape."""
        return np.asarray(x, dtype=np.float64)


def _same_encoding(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.data_width == b.data_width


class EmulationBackend:
    """The partition's hls4ml C emulation library (splitting/emulation.py's EmulationLib).

    Raises AgentConfigError when the library file is missing."""

    kind = "emulation"
    forward_bytes = False

    def __init__(self, cfg, base):
        from splitting import emulation

        lib = config_path(cfg["library"], base)
        if not os.path.isfile(lib):
            raise AgentConfigError("emulation library %s not found: upload the partition's artifact" % lib)
        self.lib = emulation.EmulationLib(lib, cfg["project"], cfg["n_in"], cfg["n_out"])
        self.note = str(cfg.get("note", ""))  # deploy's reason when a virtual board has no fast model

    def run(self, x):
        """One frame (n_in elements, any shape) in; a flat float64 array of n_out elements out.
        Raises ValueError when the frame has another number of elements."""
        return self.lib.run(x)


def _passthrough(cfg, base, inputs, outputs, slots, log):
    return PassthroughBackend(cfg, inputs, outputs)


def _emulation(cfg, base, inputs, outputs, slots, log):
    return EmulationBackend(cfg, base)


def _fast(cfg, base, inputs, outputs, slots, log):
    from harness.agent.fast_model import FastBackend

    return FastBackend(cfg, base, EmulationBackend, log)


def _overlay(cfg, base, inputs, outputs, slots, log):
    from harness.agent.overlay import OverlayBackend

    return OverlayBackend(cfg, base, inputs, outputs, slots=slots)


BACKENDS = {"emulation": _emulation, "fast": _fast, "overlay": _overlay, "passthrough": _passthrough}


def make_backend(cfg, base, inputs, outputs, slots, log):
    """The backend the config's `backend` dict names. inputs, outputs: the links' contracts; slots: DMA slots a
    raw-word overlay allocates (the frames that can be inside the agent at once); log: where a fast backend
    says which model it runs. Raises AgentConfigError for another kind or a missing library or bitstream."""
    make = BACKENDS.get(cfg.get("kind"))
    if make is None:
        raise AgentConfigError("backend kind %r: use %s" % (cfg.get("kind"), ", ".join(sorted(BACKENDS))))
    return make(cfg, base, inputs, outputs, slots, log)
