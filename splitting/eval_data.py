"""Input frames for accuracy and timing: the one home of every `--data` option (verify, cosim, run, bench).

    spec            what it gives
    "digits"        splitrack's OWN 75/25 split of scikit-learn's digits (test part, 450 labelled 8x8 images);
                    it may overlap the data a user trained on: their accuracy on it can be too high
    "random"        uniform [0, 1) frames, no labels (timing only)
    "auto"          digits when the model takes 64 values, else random
    FILE.npz        the user's data: array `x` (frames, batch axis first) and optional `y` (integer labels)
    FILE.npy        the user's frames, no labels

A user's file is untrusted input: it is loaded without pickle, must hold finite numbers of the model's
input size, and its labels must be one integer per frame. Every problem is a UserError saying what to fix.
"""
from __future__ import annotations

import math
from zlib import error as zlib_error
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

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


def load(spec: str, input_shape: Sequence[int], n: Optional[int] = None, seed: int = 0,
         allow: Sequence[str] = ("digits", "random", "auto", "file")) -> EvalData:
    """Frames for a model taking `input_shape` (without batch axis); the first `n` when given.

    Raises DataError for an unknown spec, a spec not in `allow`, a missing or malformed file, or frames
    of the wrong size. For "random" `n` is required (how many frames to draw).
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
        return EvalData(np.random.default_rng(seed).uniform(0, 1, (n,) + shape).astype(np.float32), None, "random")
    else:
        d = _from_file(Path(spec), shape)
    if n is not None:
        d.x = d.x[:n]
        d.y = d.y[:n] if d.y is not None else None
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
