"""The op kinds of a partition's fixed-point computation, and the handler tables its interpreters key on.

hls4ml's converted graph is read into a list of ops (`harness.cosim.ops.ops_from_graph`: an "input" op, then
one op per layer, each of one kind below). Three interpreters compute such a list: the bit-exact reference
(`harness/cosim/bitexact.py`), the RTL generator's da4ml trace (`harness/cosim/rtlgen.py`) and the fast model a
virtual board runs (`harness/agent/fast_model.py`). Each keeps one `Handlers` table: its handlers registered by
the kinds they handle (as hls4ml's layer handlers declare what they `handle`), every other kind refused by name
with the reason. A new kind is one entry in KINDS and, per interpreter, a handler or a refusal;
sim_tests/cosim/test_op_kinds.py checks that every table covers every kind.

Shipped to boards with the fast model: Python 3.8, standard library only.
"""
from __future__ import annotations

INPUT = "input"  # the first op of every list: the partition's input shape and type (no step of its own)

# kind -> what it computes, as hls4ml's HLS templates do
KINDS = {
    "pad": "ZeroPadding2D: zero rows and columns around the image",
    "dense": "Dense: every product assigned to accum_t, summed from the bias, the sum assigned to result_t",
    "conv2d": "Conv2D (io_stream line buffer): the Dense step over every window",
    "relu": "ReLU",
    "linear": "linear activation: an assignment to result_t",
    "maxpool": "MaxPooling2D, reduced in accum_t",
    "reshape": "Flatten / Reshape / io_stream Repack: the values stay",
    "softmax": "softmax, 'stable' implementation: exp and inverse lookup tables",
    "sigmoid": "sigmoid as nnet_activation_stream.h's table lookup",
    "tanh": "tanh as nnet_activation_stream.h's table lookup",
}


class Handlers(object):
    """One interpreter's handlers by op kind. `handles(*kinds)` registers a function for those kinds (a
    decorator); `refuse(kind, why)` says why a kind is not computed. `handler(kind, name)` returns the function,
    or raises `error` (the interpreter's own exception class) naming the op, the kind and the reason."""

    def __init__(self, interpreter, error=ValueError):
        self.interpreter = interpreter
        self.error = error
        self.table = {}
        self.refused = {}

    def _claim(self, kind):
        if kind not in KINDS:
            raise ValueError("%s: op kind %r is not one of splitting.op_kinds.KINDS" % (self.interpreter, kind))
        if kind in self.table or kind in self.refused:
            raise ValueError("%s: op kind %r registered twice" % (self.interpreter, kind))

    def handles(self, *kinds):
        """Decorator: the function handles ops of these kinds."""
        def register(fn):
            for kind in kinds:
                self._claim(kind)
                self.table[kind] = fn
            return fn
        return register

    def refuse(self, kind, why):
        """Ops of this kind are refused with `why` (one line, what to do instead)."""
        self._claim(kind)
        self.refused[kind] = why

    def handler(self, kind, name=""):
        """The function registered for `kind`; raises self.error for a refused or unknown kind."""
        fn = self.table.get(kind)
        if fn is not None:
            return fn
        why = self.refused.get(kind, "not an op kind of splitting.op_kinds")
        raise self.error("%s%s does not compute op kind %r: %s"
                         % (name + ": " if name else "", self.interpreter, kind, why))

    def uncovered(self):
        """Kinds of KINDS neither handled nor refused (a new kind this interpreter has not taken up)."""
        return sorted(set(KINDS) - set(self.table) - set(self.refused))
