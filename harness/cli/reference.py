"""`splitrack reference [fc|cnn]`: train (or load from the cache) and save the reference models (splitting.reference_models)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from splitting.reference_models import MODELS, digits_data, model_inputs, reference_model


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack reference`: the model (fc, cnn; default both), -o folder."""
    p.add_argument("name", choices=MODELS, nargs="?", help="which model (default: both)")
    p.add_argument("-o", "--out", default="models", help="folder for the .keras files (default: models/)")


def run(args) -> int:
    """Train (or load from the cache) each reference model, save it as <out>/<name>.keras and print its test
    accuracy on digits. Returns 0."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, _, x_te, y_te = digits_data()
    for name in [args.name] if args.name else MODELS:
        m = reference_model(name, verbose=True)
        acc = float(np.mean(np.argmax(m.predict(model_inputs(name, x_te), verbose=0), axis=1) == y_te))
        m.save(out / f"{name}.keras")
        print(f"{name}: {m.count_params()} parameters, test accuracy {acc:.4f} -> {out / (name + '.keras')}")
    return 0
