"""Input frames for accuracy and timing: the one home of every `--data` option (verify, cosim, run, bench).

    spec            what it gives
    "digits"        splitrack's OWN 75/25 split of scikit-learn's digits (test part, 450 labelled 8x8 images);
                    it may overlap the data a user trained on: their accuracy on it can be too high
    "random"        uniform [0, 1) frames, no labels (timing only)
    "auto"          digits when the model takes 64 values, else random
    FILE.npz        the user's data: array `x` (frames, batch axis first) and optional `y` (integer labels)
    FILE.npy        the user's frames, no labels

A user's file is untrusted input: it is loaded without pickle, must hold finite numbers of the model's
input size (and, given a model's `InputDomain`, values it can read), and its labels must be one integer per
frame. Every problem is a UserError saying what to fix.

The values an input may take come from what the model reads, not only from the input's type: an Embedding
reads integers below its vocabulary size (`input_domain`, one rule per layer kind in `READS`).
"""
from __future__ import annotations

import math
from zlib import error as zlib_error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .errors import UserError

DIGITS_NOTE = ("splitrack's own split of scikit-learn digits (test part); it may overlap your model's training "
               "data, so accuracy on it can be too high: give your own test set with --data FILE.npz")


class DataError(UserError):
    """A --data value or file that cannot give frames for this model."""


@dataclass
class EvalData:
    """Frames in the model's input shape, their labels when known, and what they are.

    x: (n,) + input_shape float32; y: (n,) int64 or None; source: "digits", "random" or the file's path;
    note: one line for the user (e.g. the digits overlap warning), "" when nothing to say.
    """

    x: np.ndarray
    y: Optional[np.ndarray]
    source: str
    note: str = ""

    def describe(self) -> str:
        """One line for the user: '<source> (<n> frames, <m> labelled | unlabelled)'."""
        lab = f"{len(self.y)} labelled" if self.y is not None else "unlabelled"
        return f"{self.source} ({len(self.x)} frames, {lab})"


@dataclass(frozen=True)
class InputDomain:
    """The values a model input may take: [lo, hi], whole numbers only when `integer`; `why` says which
    layer (or the input's dtype) decides it, "" when only the range given to `input_domain` does."""

    lo: float
    hi: float
    integer: bool = False
    why: str = ""

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Values spread uniformly over the domain (float32, `shape`)."""
        if self.integer:
            return rng.integers(int(math.ceil(self.lo)), int(math.floor(self.hi)) + 1, shape).astype(np.float32)
        return rng.uniform(self.lo, self.hi, shape).astype(np.float32)

    def problem(self, x: np.ndarray) -> str:
        """Why `x` holds values outside the domain ("" when it does not)."""
        bad = (x < self.lo) | (x > self.hi)
        if self.integer:
            bad |= x != np.round(x)
        if not bad.any():
            return ""
        v = float(x[bad].flat[0])
        what = f"integers in [{self.lo:g}, {self.hi:g}]" if self.integer else f"values in [{self.lo:g}, {self.hi:g}]"
        return f"x holds {v:g}, but the model reads {what}" + (f" ({self.why})" if self.why else "")


# layer kind -> the values it reads on its input (an index into a table must be a whole number inside it)
READS: Dict[str, Callable[[object], InputDomain]] = {
    "Embedding": lambda layer: InputDomain(0, int(layer.input_dim) - 1, True,
                                           f"Embedding {layer.name!r} reads integers below {int(layer.input_dim)}"),
}
# layers that only move values around: what reads their output reads the input
_PASS_THROUGH = ("Reshape", "Flatten", "Permute", "RepeatVector", "Cropping1D", "Cropping2D", "InputLayer")


def input_domain(model, lo: float, hi: float) -> InputDomain:
    """The values the first input of the Keras `model` may take: [lo, hi] (the range its type holds),
    narrowed by what the layers reading it accept (READS: an Embedding reads integers below its vocabulary
    size) and made whole numbers when the input's dtype is an integer type."""
    from .quant_bound import inputs_of, tensor_key

    src = model.inputs[0]
    integer = "int" in str(getattr(src, "dtype", ""))
    dom = InputDomain(lo, hi, integer, "the model's input is of an integer type" if integer else "")
    fed = {tensor_key(src)}
    for layer in model.layers:  # topological order: a pass-through layer's readers come after it
        try:
            if not fed.intersection(inputs_of(layer)):
                continue
        except (AttributeError, ValueError):  # a shared layer (several call sites): not followed
            continue
        kind = type(layer).__name__
        if kind in _PASS_THROUGH:
            fed.add((layer.name, 0))
        elif kind in READS:
            r = READS[kind](layer)
            dom = InputDomain(max(dom.lo, r.lo), min(dom.hi, r.hi), dom.integer or r.integer, r.why)
    return dom


def load(spec: str, input_shape: Sequence[int], n: Optional[int] = None, seed: int = 0,
         allow: Sequence[str] = ("digits", "random", "auto", "file"), domain: Optional[InputDomain] = None) -> EvalData:
    """Frames for a model taking `input_shape` (without batch axis); the first `n` when given. With a
    `domain` (from `input_domain`), "random" draws from it when it is whole numbers only, and every frame
    must lie in it.

    Raises DataError for an unknown spec, a spec not in `allow`, a missing or malformed file, frames of the
    wrong size, or values outside `domain`. For "random" `n` is required (how many frames to draw).
    """
    shape = tuple(int(s) for s in input_shape)
    size = math.prod(shape)
    kind = spec if spec in ("digits", "random", "auto") else "file"
    if kind not in allow:
        raise DataError(f"--data {spec!r}: choose one of {', '.join(a if a != 'file' else 'FILE.npz/.npy' for a in allow)}")
    if spec == "auto":
        spec = "digits" if size == 64 else "random"
    if spec == "digits":
        if size != 64:
            raise DataError(f"--data digits gives 8x8 images, but the model takes {shape}: use --data random "
                            "or your own FILE.npz")
        from .reference_models import digits_data

        _, _, x, y = digits_data()
        d = EvalData(x.reshape((len(x),) + shape).astype(np.float32), y.astype(np.int64), "digits", DIGITS_NOTE)
    elif spec == "random":
        if n is None:
            raise DataError("--data random needs a frame count")
        rng = np.random.default_rng(seed)
        if domain is not None and domain.integer:  # indices: [0, 1) would only ever say 0
            return EvalData(domain.draw(rng, (n,) + shape), None, "random", f"random: {domain.why}")
        return EvalData(rng.uniform(0, 1, (n,) + shape).astype(np.float32), None, "random")
    else:
        d = _from_file(Path(spec), shape)
    if n is not None:
        d.x = d.x[:n]
        d.y = d.y[:n] if d.y is not None else None
    if domain is not None and domain.problem(d.x):
        raise DataError(f"--data {spec}: {domain.problem(d.x)}: give data made for this model")
    return d


def _from_file(p: Path, shape) -> EvalData:
    if p.suffix not in (".npz", ".npy"):
        raise DataError(f"--data {p}: give digits, random, or a .npz (x and optional y) or .npy file")
    if not p.is_file():
        raise DataError(f"--data {p}: no such file")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"--data {p}: not a readable numpy file ({e}); save it with np.savez(path, x=..., y=...)") from None
    if isinstance(z, np.lib.npyio.NpzFile):
        with z:
            if "x" not in z.files:
                raise DataError(f"--data {p} has no array 'x' (it has {', '.join(z.files) or 'none'}): "
                                "save it with np.savez(path, x=inputs, y=labels)")
            try:  # the members are read here (object arrays, which need pickle, are refused here)
                x, y = z["x"], (z["y"] if "y" in z.files else None)
            except (OSError, ValueError, EOFError, zlib_error) as e:
                raise DataError(f"--data {p}: not a readable numpy file ({e}); save numbers with np.savez") from None
    else:
        x, y = z, None
    if x.dtype.kind not in "fiub" or x.ndim < 1 or len(x) == 0:
        raise DataError(f"--data {p}: x must be a non-empty numeric array with the frames on its first axis")
    per = x.size // len(x)
    if per != math.prod(shape):
        raise DataError(f"--data {p}: frames have {per} values ({x.shape[1:]}), the plan takes {shape}: "
                        "give data made for this model")
    x = np.ascontiguousarray(x, dtype=np.float32).reshape((len(x),) + shape)
    if not np.isfinite(x).all():
        raise DataError(f"--data {p}: x holds NaN or infinite values")
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:  # one-hot labels
            y = np.argmax(y, axis=1)
        y = y.reshape(-1)
        if len(y) != len(x) or y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise DataError(f"--data {p}: y must hold one integer label per frame ({len(x)} frames, y has "
                            f"{len(y)} values of type {y.dtype})")
        y = y.astype(np.int64)
    return EvalData(x, y, str(p))


def cycled(d: EvalData, frames: int) -> EvalData:
    """`frames` frames, repeating the data when it has fewer; labels cover one pass only (no double counting)."""
    reps = -(-frames // len(d.x))
    x = np.concatenate([d.x] * reps)[:frames] if reps > 1 else d.x[:frames]
    y = d.y[: min(frames, len(d.y))] if d.y is not None else None
    return EvalData(x, y, d.source, d.note)
