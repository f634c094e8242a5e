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


@pytest.fixture(scope="session")
def make_plan(tmp_path_factory):
    """make_plan(name) -> (Plan, keras models by partition, source keras model); written once per session."""
    made = {}

    def make(name):
        if name not in made:
            from splitting.reference import reference_model
            from splitting.split import split_model, write_plan
            from splitting.plan import Plan

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
    from splitting.reference import digits_data, model_inputs

    _, _, x, y = digits_data()

    def get(model_name):
        return model_inputs(model_name, x[:FRAMES]).astype(np.float32), y[:FRAMES]

    return get
