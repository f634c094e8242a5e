"""`splitrack reference [fc|cnn|resnet8|dscnn|ad|vww]`: train (or load from the cache) and save the reference
models (splitting.reference_models: digits; splitting.mlperf_tiny: the MLPerf Tiny shapes)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from splitting.mlperf_tiny import ARCHITECTURES, mlperf_tiny_model
from splitting.reference_models import MODELS, digits_data, model_inputs, reference_model


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack reference`: the model (fc, cnn, or an MLPerf Tiny shape: resnet8, dscnn,
    ad, vww; default fc and cnn), -o folder."""
    p.add_argument("name", choices=MODELS + tuple(ARCHITECTURES), nargs="?",
                   help="which model (default: fc and cnn); resnet8, dscnn, ad, vww: the MLPerf Tiny shapes")
    p.add_argument("-o", "--out", default="models", help="folder for the .keras files (default: models/)")


def run(args) -> int:
    """Train (or load from the cache) each reference model, save it as <out>/<name>.keras and print its test
    accuracy on digits (MLPerf Tiny shapes: seeded weights, calibrated on synthetic inputs; no accuracy).
    Returns 0."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.name in ARCHITECTURES:
        m = mlperf_tiny_model(args.name)
        m.save(out / f"{args.name}.keras")
        shape = "x".join(str(int(d)) for d in m.inputs[0].shape[1:])
        print(f"{args.name}: MLPerf Tiny shape, input {shape}, {m.count_params()} parameters, seeded weights "
              f"(BatchNormalization calibrated on synthetic inputs) -> {out / (args.name + '.keras')}")
        return 0
    _, _, x_te, y_te = digits_data()
    for name in [args.name] if args.name else MODELS:
        m = reference_model(name, verbose=True)
        acc = float(np.mean(np.argmax(m.predict(model_inputs(name, x_te), verbose=0), axis=1) == y_te))
        m.save(out / f"{name}.keras")
        print(f"{name}: {m.count_params()} parameters, test accuracy {acc:.4f} -> {out / (name + '.keras')}")
    return 0
