"""Plans the hardware tests deploy: the reference models split the three ways (sequential, neuron, input).

Small on purpose (the FC reference model, and a two-stage CNN): every partition's hls4ml emulation
library is compiled once and cached by content hash, so a second run starts streaming at once.
"""
from __future__ import annotations

import numpy as np
import pytest

# name -> (reference model, split_model keyword arguments)
PLANS = {
    "fc_seq": ("fc", {"at": ["fc1", "fc2"]}),      # three stages, one board each
    "fc_neuron": ("fc", {"neurons": {"fc1": 2}}),  # fc1's units over two boards in parallel, concatenated
    "fc_input": ("fc", {"inputs": {"fc1": 2}}),    # fc1's inputs over two boards, partial sums joined
    "cnn_seq": ("cnn", {"at": ["conv2"]}),         # convolutions on one board, pooling + dense on the next
}
FRAMES = 40

# A model on which hls4ml's fixed point is exact, so Keras can be matched within the output contract's step:
# inputs and weights on a 2**-3 grid, biases on 2**-6, magnitudes small enough that every product and sum
# stays on a grid of at most 2**-12 below 2**12: exact in ap_fixed<32,16> and in Keras's float32 alike.
GRID_PRECISION = "ap_fixed<32,16>"
GRID_PLANS = {
    "grid_seq": {"at": ["g1", "g2"]},
    "grid_neuron": {"neurons": {"g2": 2}},
    "grid_input": {"inputs": {"g2": 2}},
}


def grid_model():
    import keras

    rng = np.random.default_rng(11)
    model = keras.Sequential([keras.Input((16,)),
                              keras.layers.Dense(12, activation="relu", name="g1"),
                              keras.layers.Dense(8, activation="relu", name="g2"),
                              keras.layers.Dense(4, name="g3")], name="grid")
    for layer in model.layers:
        w, b = layer.get_weights()
        layer.set_weights([rng.integers(-4, 5, w.shape) / 8.0, rng.integers(-32, 33, b.shape) / 64.0])
    return model


def grid_frames(n=FRAMES):
    return (np.random.default_rng(12).integers(-8, 9, (n, 16)) / 8.0).astype(np.float32)


@pytest.fixture(scope="session")
def make_plan(tmp_path_factory):
    """make_plan(name) -> (Plan, keras models by partition, source keras model); written once per session."""
    made = {}

    def make(name):
        if name not in made:
            from splitting.reference_models import reference_model
            from splitting.split import split_model, write_plan
            from splitting.plan import Plan

            if name in GRID_PLANS:
                model, kw = grid_model(), dict(GRID_PLANS[name], precision=GRID_PRECISION)
            else:
                model_name, kw = PLANS[name]
                model = reference_model(model_name)
            plan, models = split_model(model, **kw)
            folder = tmp_path_factory.mktemp(name)
            write_plan(plan, models, folder)
            made[name] = (Plan.load(folder), models, model)
        return made[name]

    return make


@pytest.fixture(scope="session")
def frames():
    """frames(model name) -> the first FRAMES digits test images in the model's input shape, and labels."""
    from splitting.reference_models import digits_data, model_inputs

    _, _, x, y = digits_data()

    def get(model_name):
        return model_inputs(model_name, x[:FRAMES]).astype(np.float32), y[:FRAMES]

    return get
