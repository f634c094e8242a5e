"""Reference models, made reproducibly: seeded training on scikit-learn's digits (ships with the package).

fc:  64 -> 112 -> 40 -> 10, about 12k parameters (the size of the published five-board FC demonstration)
cnn: 8x8x1 -> conv 16 -> conv 32 -> maxpool -> dense 130 -> dense 10, about 73k parameters
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Tuple

import numpy as np

from .errors import UserError
from .user_cache import cache_root

CACHE = cache_root()
SEED = 1234
MODELS = ("fc", "cnn")
_VERSION = "1"  # bump when the architectures or the training change


def digits_data() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 8x8x1 images in [0, 1], int labels; a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(SEED).permutation(len(x))
    cut = int(0.75 * len(x))
    tr, te = idx[:cut], idx[cut:]
    return x[tr], y[tr], x[te], y[te]


def _architecture(name: str):
    import keras
    from keras import layers

    if name == "fc":
        return keras.Sequential(
            [
                keras.Input((64,), name="pixels"),
                layers.Dense(112, activation="relu", name="fc1"),
                layers.Dense(40, activation="relu", name="fc2"),
                layers.Dense(10, name="fc3"),
                layers.Activation("softmax", name="softmax"),
            ],
            name="digits_fc",
        )
    if name == "cnn":
        return keras.Sequential(
            [
                keras.Input((8, 8, 1), name="image"),
                layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
                layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
                layers.MaxPooling2D(2, name="pool"),
                layers.Flatten(name="flatten"),
                layers.Dense(130, activation="relu", name="fc1"),
                layers.Dense(10, name="fc2"),
                layers.Activation("softmax", name="softmax"),
            ],
            name="digits_cnn",
        )
    raise UserError(f"unknown reference model {name!r}: choose one of {', '.join(MODELS)}")


def model_inputs(name: str, x: np.ndarray) -> np.ndarray:
    """The digits images in the shape a reference model takes (the FC net takes them flattened)."""
    return x.reshape(len(x), -1) if name == "fc" else x


def reference_model(name: str, cache: Path = CACHE, verbose: bool = False):
    """Train (once; cached by architecture, seed and data) and return a reference model."""
    import keras

    model = _architecture(name)  # validates the name before any work
    x_tr, y_tr, x_te, y_te = digits_data()
    key = hashlib.sha256(f"{name}:{_VERSION}:{SEED}:{keras.__version__}".encode() + x_tr.tobytes()).hexdigest()[:12]
    path = Path(cache) / "models" / f"{name}-{key}.keras"
    if path.is_file():
        return keras.models.load_model(path)
    if verbose:
        print(f"training reference model {name} (seed {SEED}) ...", flush=True)
    keras.utils.set_random_seed(SEED)
    model = _architecture(name)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(model_inputs(name, x_tr), y_tr, epochs=30 if name == "fc" else 20, batch_size=32, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.keras")
    model.save(tmp)
    tmp.replace(path)  # atomic: parallel test workers never see half a file
    return model
