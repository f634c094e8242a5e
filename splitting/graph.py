"""Walking a Keras model's layer graph: where a clean cut can go, and sub-models between cuts."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .errors import UserError

from .rebuild import ACTIVATION_LAYERS, ELEMENTWISE, apply, function_name


class SplitError(UserError):
    """A cut or split that cannot be made; the message names the layer and what to do."""


# Packages whose Keras layers splitrack knows: the module that registers them with Keras when imported, and
# the distribution to install. HGQ2 (quantisation-aware layers, converted by hls4ml 1.3) is the only one.
KNOWN_LAYER_PACKAGES = {"hgq": ("hgq", "hgq2")}


def layer_packages(path) -> Dict[str, List[str]]:
    """{package: [layer names]} for the layers of a .keras file that do not come from Keras itself."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except Exception:  # not a .keras zip (an .h5, a broken file): Keras itself will say what is wrong
        return {}
    out: Dict[str, List[str]] = {}
    for lc in (config.get("config") or {}).get("layers") or []:
        module = str(lc.get("module") or "")
        reg = str(lc.get("registered_name") or "")
        pkg = module.split(".")[0] if module else (reg.split(">")[0] if ">" in reg else "")
        if pkg and pkg != "keras":
            name = (lc.get("config") or {}).get("name", lc.get("class_name"))
            out.setdefault(pkg, []).append(f"{name} ({lc.get('class_name')})")
    return out


def register_layer_packages(path) -> List[str]:
    """Import what registers the layers of the model at `path` with Keras (HGQ2's `hgq`); the packages used.
    UserError naming the package when it is one splitrack does not know or one that is not installed."""
    import importlib

    pkgs = layer_packages(path)
    for pkg, layers in pkgs.items():
        if pkg not in KNOWN_LAYER_PACKAGES:
            raise UserError(
                f"{path}: layer {layers[0]} comes from the package {pkg!r}, which splitrack does not know (it splits "
                f"Keras 3 layers and HGQ2 layers, package 'hgq'): rebuild the model with those layers"
            )
        module, dist = KNOWN_LAYER_PACKAGES[pkg]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"{path}: layer {layers[0]} comes from the package {pkg!r} ({dist}), which is not "
                            f"installed: pip install {dist}") from None
    return sorted(pkgs)


def load_model(path):
    """Load a .keras/.h5 model, or say what is wrong with the file in one line. Layers of HGQ2 (package
    `hgq`) are registered first; layers of any other package are refused naming that package."""
    import keras

    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file {p} not found: give the path of a Keras model saved with model.save('m.keras')")
    register_layer_packages(p)
    try:
        return keras.models.load_model(p, compile=False)
    except Exception as e:  # Keras raises many kinds here; all mean "not a loadable model"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {p} as a Keras model ({first[:160]}): save it with Keras 3 as .keras") from None


def weights_sha256(model_or_layers) -> str:
    """Hash of the weights (values and shapes), stable across saves, unlike the bytes of a .keras zip."""
    h = hashlib.sha256()
    layers = getattr(model_or_layers, "layers", model_or_layers)
    for layer in layers:
        for w in layer.get_weights():
            h.update(str(w.shape).encode())
            h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def activation_name(layer) -> str:
    """The activation a layer applies, by name ('linear' for none): its class for an activation layer, its
    `activation=` argument otherwise (see rebuild.function_name)."""
    cls = type(layer).__name__
    if cls in ("ReLU", "Softmax", "LeakyReLU", "ELU", "PReLU"):
        return {"ReLU": "relu", "Softmax": "softmax", "LeakyReLU": "leaky_relu", "ELU": "elu", "PReLU": "prelu"}[cls]
    return function_name(layer.get_config().get("activation", "linear"))


def is_elementwise(act: str) -> bool:
    """True when activation `act` acts on each value alone (so a neuron split may apply it per part)."""
    return act in ELEMENTWISE


@dataclass
class LayerGraph:
    """Layers in topological order (input layers excluded) and, for each, the names of the layers it reads."""

    model: object
    order: List[str]
    inbound: Dict[str, List[str]]
    input_name: str

    @classmethod
    def of(cls, model) -> "LayerGraph":
        """The layer graph of a Keras model (layers in topological order and their inbound layers).
        Raises SplitError for a model with more than one input or output."""
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            what = (f"{len(model.inputs)} inputs" if len(model.inputs) != 1 else f"{len(model.outputs)} outputs")
            raise SplitError(f"the model has {what}: splitrack splits models with one input and one output")
        order, inbound, input_name = [], {}, None
        for layer in model.layers:
            if type(layer).__name__ == "InputLayer":
                input_name = layer.name
                continue
            parents = []
            for node in layer._inbound_nodes[:1]:  # a layer used once; shared layers are not split
                parents = [p.operation.name for p in node.parent_nodes]
            order.append(layer.name)
            inbound[layer.name] = parents
        if input_name is None:  # Sequential models hide their InputLayer from .layers
            first = order[0]
            if inbound.get(first):  # the hidden InputLayer's name, as the first layer's node knows it
                input_name = inbound[first][0]
            else:
                input_name = model.inputs[0].name if hasattr(model.inputs[0], "name") else "input"
                inbound[first] = [input_name]
        return cls(model, order, inbound, input_name)

    def layer(self, name: str):
        """The Keras layer named `name`; SplitError (listing the layers) when there is none."""
        try:
            return self.model.get_layer(name)
        except ValueError:
            raise SplitError(f"no layer named {name!r} in model {self.model.name}; its layers are: {', '.join(self.order)}") from None

    def consumers(self, name: str) -> List[str]:
        """Names of the layers that take `name`'s output as an input, in graph order."""
        return [n for n in self.order if name in self.inbound[n]]

    def crossing(self, after: str) -> List[str]:
        """Tensors (by producing layer) that flow from `after` and everything before it to what follows."""
        i = self.order.index(after)
        before = set(self.order[: i + 1]) | {self.input_name}
        out = []
        for n in self.order[i + 1 :]:
            for p in self.inbound[n]:
                if p in before and p not in out:
                    out.append(p)
        return out

    def clean_cuts(self) -> List[str]:
        """Layer names after which a cut is a clean boundary (exactly one tensor crosses)."""
        return [n for n in self.order[:-1] if self.crossing(n) == [n] and not self._separates_activation(n)]

    def _separates_activation(self, name: str):
        cons = self.consumers(name)
        if len(cons) != 1:
            return None
        nxt, layer = self.layer(cons[0]), self.layer(name)
        # only a layer with an `activation=` argument of its own (Dense, Conv...) is "separated" from an
        # activation layer that follows it; a Reshape or Flatten before a Softmax is an ordinary cut
        if type(nxt).__name__ in ACTIVATION_LAYERS and "activation" in layer.get_config() \
                and activation_name(layer) == "linear" and type(layer).__name__ not in ACTIVATION_LAYERS:
            return cons[0]
        return None

    def is_clean(self, after: str) -> bool:
        """True when exactly one tensor, `after`'s own output, crosses a cut after `after`."""
        return self.crossing(after) == [after]

    def tensor_shape(self, name: str) -> Tuple[int, ...]:
        """Shape (no batch axis) of the tensor `name`: a layer's output, or the model input."""
        t = self.model.inputs[0] if name == self.input_name else self.layer(name).output
        return tuple(int(d) for d in t.shape[1:])

    def segment_io(self, names: Sequence[str]) -> Tuple[List[str], List[str]]:
        """(inputs, outputs) of the run of layers `names` (contiguous in the topological order): the tensors
        it reads from before it, in the order it first reads them, and the tensors it produces that layers
        after it read (or the model's output), in graph order."""
        inside = set(names)
        ins: List[str] = []
        for n in names:
            for p in self.inbound[n]:
                if p not in inside and p not in ins:
                    ins.append(p)
        after = set(self.order[self.order.index(names[-1]) + 1:])
        outs = [n for n in names if n == self.order[-1] or any(c in after for c in self.consumers(n))]
        return ins, outs

    def check_cut(self, after: str) -> None:
        """Raise SplitError when a cut after layer `after` (in the topological order) cannot be made: after the
        model's last layer, or between a layer and the activation layer that follows it. Any number of tensors
        may cross the cut (each gets its own link)."""
        self.layer(after)
        if after == self.order[-1]:
            raise SplitError(f"cannot cut after {after!r}: it is the model's last layer; cut after an earlier layer")
        act = self._separates_activation(after)
        if act:
            raise SplitError(
                f"cannot cut after {after!r}: it would separate the layer from its activation {act!r}; "
                f"cut after {act!r} instead"
            )

    def check_clean(self, after: str, why: str) -> None:
        """SplitError (naming the nearest clean cut) unless only `after`'s output crosses a cut after it."""
        crossing = self.crossing(after)
        if crossing != [after]:
            valid = self._nearest_clean(after)
            raise SplitError(
                f"{why}: {len(crossing)} tensors cross after {after!r} ({', '.join(crossing)}), inside a branch; "
                + (f"use {valid!r} instead" if valid else "the model has no clean cut")
            )

    def _nearest_clean(self, after: str):
        clean = self.clean_cuts()
        if not clean:
            return None
        i = self.order.index(after)
        return min(clean, key=lambda n: (abs(self.order.index(n) - i), -self.order.index(n)))


def clone_layer(layer, **overrides):
    """A fresh layer with the same configuration (and overrides), not yet built."""
    cfg = layer.get_config()
    cfg.update(overrides)
    return type(layer).from_config(cfg)


def submodel(graph: LayerGraph, names: Sequence[str], input_shape, name: str, prefix=(),
             inputs: Sequence[str] = (), outputs: Sequence[str] = ()):
    """A functional model computing layers `names` (a contiguous run of the topological order).

    With `inputs` (tensor names, as LayerGraph.segment_io gives them) of more than one tensor, the model has
    one Keras input per tensor, named `<name>_in<i>`, shapes from the graph; else one input `<name>_in` of
    `input_shape`. Its outputs are the tensors `outputs` (default: the last layer's). `prefix` are extra (new
    layer, weights) pairs applied to a single input first: activation layers moved after a neuron join
    (rebuild.rebuild makes them).
    """
    import keras

    ins = list(inputs) or list(dict.fromkeys(p for p in graph.inbound[names[0]]))
    tensors = {}
    if len(ins) > 1:
        model_inputs = [keras.Input(graph.tensor_shape(t), name=f"{name}_in{i}") for i, t in enumerate(ins)]
        tensors.update(zip(ins, model_inputs))
    else:
        inp = keras.Input(tuple(input_shape), name=f"{name}_in")
        x = inp
        for extra, w in prefix:
            x = apply(x, extra, w)
        model_inputs = [inp]
        tensors.update({p: x for p in (ins or graph.inbound[names[0]])})
    for n in names:
        src = graph.layer(n)
        new = clone_layer(src)
        args = [tensors.get(p) for p in graph.inbound[n]]
        if any(a is None for a in args):
            raise SplitError(f"layer {n!r} reads a tensor from outside its partition: cut elsewhere")
        out = new(args[0] if len(args) == 1 else args)
        new.set_weights(src.get_weights())
        tensors[n] = out
    outs = [tensors[o] for o in (list(outputs) or [names[-1]])]
    return keras.Model(model_inputs if len(model_inputs) > 1 else model_inputs[0],
                       outs if len(outs) > 1 else outs[0], name=name)
