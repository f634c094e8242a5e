"""The four MLPerf Tiny reference architectures, built to their published shapes (mlcommons/tiny,
benchmark/training/*): the models hls4ml users put on small FPGAs, and the graphs (residual adds, depthwise
separable blocks) that splitrack must cut.

resnet8:  image classification, 32x32x3 -> 10; stem conv 16, three residual stacks (16, 32, 64 filters;
          BatchNormalization after every conv, an Add per stack, a strided 1x1 conv on the shortcut of stacks 2
          and 3), average pooling, Dense softmax; 78.7k parameters (resnet_v1_eembc, num_filters 16/32/64)
dscnn:    keyword spotting, 49x10x1 MFCC -> 12; conv 64 (10x4, stride 2), four depthwise separable blocks
          (DepthwiseConv2D 3x3 + BN + ReLU, Conv2D 64 1x1 + BN + ReLU), average pooling, Dense softmax;
          24.9k parameters (the DS-CNN small of Hello Edge that MLPerf Tiny took; Dropout left out: it does
          nothing at inference)
ad:       anomaly detection, the fully connected autoencoder on 640 log-mel values (5 frames x 128): four
          Dense 128 + BN + ReLU, a Dense 8 bottleneck + BN + ReLU, four Dense 128 + BN + ReLU, Dense 640;
          270k parameters
vww:      visual wake words, MobileNetV1 alpha 0.25 on 96x96x3 -> 2: a conv 8 (stride 2) and 13 depthwise
          separable blocks (8 -> 256 channels), average pooling, Dense softmax; 221k parameters

The references average the last feature map with an AveragePooling2D as large as the map and a Flatten;
here it is the GlobalAveragePooling2D that computes the same averages (and that Keras's own MobileNet uses):
hls4ml's io_stream global pooling accumulates each channel as the pixels arrive, where a map-sized pooling
window holds and adds the whole window at once.

Nothing is downloaded: weights are seeded (he_normal, as the references initialise them), and every
BatchNormalization is calibrated on synthetic inputs (its moving mean and variance set to those of its
input, layer by layer), so activations stay in the range of ap_fixed<16,6> as those of a trained model
would. Made once per architecture, seed and Keras version and cached under the user cache.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Dict

import numpy as np

from .errors import UserError
from .user_cache import cache_root

SEED = 2021
_VERSION = "2"  # bump when an architecture or the calibration changes


def _conv_bn(x, filters, kernel, strides, name, relu=True):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal", name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _dw_bn(x, strides, name):
    from keras import layers

    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", depthwise_initializer="he_normal", name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def resnet8():
    """ResNet-8 of MLPerf Tiny image classification (32x32x3 -> 10 classes)."""
    import keras
    from keras import layers

    inp = keras.Input((32, 32, 3), name="image")
    x = _conv_bn(inp, 16, 3, 1, "stem")
    for i, (f, s) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        y = _conv_bn(x, f, 3, s, f"b{i}_c1")
        y = _conv_bn(y, f, 3, 1, f"b{i}_c2", relu=False)
        if s != 1:  # the shortcut changes shape with the stack
            x = layers.Conv2D(f, 1, strides=s, padding="same", kernel_initializer="he_normal", name=f"b{i}_short")(x)
        x = layers.Add(name=f"b{i}_add")([x, y])
        x = layers.Activation("relu", name=f"b{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, activation="softmax", kernel_initializer="he_normal", name="fc")(x)
    return keras.Model(inp, out, name="resnet8")


def dscnn():
    """DS-CNN of MLPerf Tiny keyword spotting (49x10x1 MFCC -> 12 classes)."""
    import keras
    from keras import layers

    inp = keras.Input((49, 10, 1), name="mfcc")
    x = _conv_bn(inp, 64, (10, 4), 2, "conv1")
    for i in range(1, 5):
        x = _dw_bn(x, 1, f"ds{i}_dw")
        x = _conv_bn(x, 64, 1, 1, f"ds{i}_pw")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(12, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="dscnn")


def ad():
    """The fully connected autoencoder of MLPerf Tiny anomaly detection (640 -> 640)."""
    import keras
    from keras import layers

    inp = keras.Input((640,), name="logmel")
    x = inp
    for i, units in enumerate([128] * 4 + [8] + [128] * 4, start=1):
        x = layers.Dense(units, name=f"d{i}")(x)
        x = layers.BatchNormalization(name=f"d{i}_bn")(x)
        x = layers.Activation("relu", name=f"d{i}_relu")(x)
    out = layers.Dense(640, name="out")(x)
    return keras.Model(inp, out, name="ad_autoencoder")


def vww():
    """MobileNetV1 (alpha 0.25) of MLPerf Tiny visual wake words (96x96x3 -> 2 classes)."""
    import keras
    from keras import layers

    inp = keras.Input((96, 96, 3), name="image")
    x = _conv_bn(inp, 8, 3, 2, "conv1")
    f = 8
    # (stride of the depthwise conv, does the pointwise conv double the channels) for blocks 2..14
    blocks = [(1, True), (2, True), (1, False), (2, True), (1, False), (2, True)] + [(1, False)] * 5 + \
             [(2, True), (1, False)]
    for i, (s, double) in enumerate(blocks, start=2):
        x = _dw_bn(x, s, f"dw{i}")
        f = f * 2 if double else f
        x = _conv_bn(x, f, 1, 1, f"pw{i}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(2, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="mobilenet_v1_025")


ARCHITECTURES: Dict[str, Callable] = {"resnet8": resnet8, "dscnn": dscnn, "ad": ad, "vww": vww}
# what Keras counts for these shapes (BatchNormalization included): ResNet-8 78.7k and MobileNetV1 0.25 221.8k
# are the published figures
PARAMETERS = {"resnet8": 78666, "dscnn": 24908, "ad": 269992, "vww": 221794}


def calibrate_batchnorm(model, x: np.ndarray) -> None:
    """Set each BatchNormalization's moving mean and variance to those of its input on `x`, in graph
    order (each after the ones before it are set): what a trained model's statistics do."""
    import keras

    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        probe = keras.Model(model.inputs, layer.input)
        v = np.asarray(probe(x, training=False), dtype=np.float64)
        axes = tuple(range(v.ndim - 1))
        gamma, beta, _, _ = layer.get_weights()
        layer.set_weights([gamma, beta, v.mean(axis=axes).astype(np.float32),
                           (v.var(axis=axes) + 1e-3).astype(np.float32)])


def synthetic_inputs(model, n: int, seed: int = SEED) -> np.ndarray:
    """`n` inputs in the model's input shape, uniform in [0, 1) (images, features scaled as the references
    scale them), seeded."""
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n,) + shape).astype(np.float32)


def mlperf_tiny_model(name: str, cache: Path = None):
    """The MLPerf Tiny reference architecture `name` (resnet8, dscnn, ad, vww) with seeded, calibrated
    weights, made once and cached. UserError for another name."""
    import keras

    if name not in ARCHITECTURES:
        raise UserError(f"unknown MLPerf Tiny model {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    key = hashlib.sha256(f"{name}:{_VERSION}:{SEED}:{keras.__version__}".encode()).hexdigest()[:12]
    path = Path(cache or cache_root()) / "models" / f"mlperf-{name}-{key}.keras"
    if path.is_file():
        return keras.models.load_model(path, compile=False)
    keras.utils.set_random_seed(SEED)
    model = ARCHITECTURES[name]()
    calibrate_batchnorm(model, synthetic_inputs(model, 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)  # atomic: parallel test workers never see half a file
    return model
