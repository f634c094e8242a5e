"""rule4ml 0.2.0 as an estimator: its GNN predictions of a segment, batched and cached, with its own MC-dropout
range.

rule4ml's own `MultiModelWrapper.predict` wants built Keras models, rebuilds its features with slow Python
loops, and its GNN normalises every graph of a batch together (`GraphNorm` is called without the batch
vector), so one candidate's prediction changes with whatever else is in the same call. We call its feature
functions (`get_global_inputs`, `get_layers_data`, `to_dataframe`) on layer dicts we build from `LayerSpec`s
exactly as its Keras parser would, and run its trained models over all candidates in one forward pass with
`GraphNorm` given the batch vector: each candidate is normalised alone, so every figure equals what `predict`
returns for that model and configuration alone (sim_tests/splitting/test_plan_rule4ml.py checks this against
`predict` itself), independent of batching, hence cacheable.

Range: rule4ml's models carry dropout layers and rule4ml offers MC dropout (`mc_predict`); we run MC_SAMPLES
forward passes with dropout on (seeded, so the range is reproducible and cacheable) and take mean +- 2
standard deviations, widened to hold the point.

rule4ml is trained on io_parallel designs at 10 ns (Vivado HLS 2019.1): for splitrack's io_stream partitions
its figures are an extrapolation, which `extrapolated` says. Layers it cannot read under Keras 3 (pooling)
are estimated analytically and added; such a figure says `rule4ml+analytic`. Dropout is left out (hls4ml
removes it). ReLU and Softmax layers are Activation("relu"/"softmax") to it.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .catalog import Device
from .errors import UserError
from .estimates import FIGURES, Estimate, Estimator, Request
from .intervals import analytic_estimate
from .layerspec import POOLING, HlsConfig, LayerSpec
from .reuse import layer_reuse

HLS4ML_VERSION = "1.1.0"  # the newest hls4ml rule4ml 0.2.0 was trained on (1.3.0, ours, raises there)
VIVADO_VERSION = "2019.1"
ADAPTER_REVISION = 2  # bump when the way we build rule4ml's inputs changes: it keys the cache
MC_SAMPLES = 16

# Layer types rule4ml 0.2.0's Keras parser reads under Keras 3 and its GNN has a category for.
# sim_tests/splitting/test_plan_rule4ml.py checks each against the parser, and checks that pooling still fails.
RULE4ML_LAYERS = {"Dense", "Conv1D", "Conv2D", "Activation", "Flatten", "BatchNormalization", "Add"}
# Layers hls4ml removes at conversion (no hardware); rule4ml's parser cannot read them under Keras 3 either.
REMOVED_BY_HLS4ML = {"Dropout"}


@lru_cache(maxsize=1)
def _rule4ml_version() -> str:
    return metadata.version("rule4ml")  # reads dist-info from disk: milliseconds, so once per process


class Rule4ml(Estimator):
    """rule4ml 0.2.0's GNN estimators (the package's default models), batched and cached; pooling layers
    added analytically (see the module docstring)."""

    name = "rule4ml"

    def __init__(self, board: Device, cache: Optional[Path] = None, progress=None):
        super().__init__(board, cache, progress)
        if not board.rule4ml:
            raise UserError(f"rule4ml has no model of board {board.name}; use --estimator analytic")
        self._wrapper = None

    @property
    def version(self) -> str:
        """rule4ml's installed version plus the GNN, hls4ml and Vivado versions it predicts for and
        ADAPTER_REVISION; part of the cache key."""
        return f"rule4ml-{_rule4ml_version()}-gnn-v2/hls4ml-{HLS4ML_VERSION}/vivado-{VIVADO_VERSION}/adapter-{ADAPTER_REVISION}"

    # -- rule4ml's view of a segment ----------------------------------------------------------------
    @staticmethod
    def rule4ml_layers(layers: Sequence[LayerSpec], cfg: HlsConfig) -> List[Dict[str, Any]]:
        """The layer dicts rule4ml's `config_from_keras_model` produces for this chain (pooling left out)."""
        out: List[Dict[str, Any]] = []
        reuses = layer_reuse(layers, cfg)
        for l, r in zip(layers, reuses):
            if l.kind in POOLING or l.kind in REMOVED_BY_HLS4ML:
                continue
            if l.kind not in RULE4ML_LAYERS:
                raise UserError(f"layer {l.name} ({l.kind}) has no rule4ml estimate")
            d: Dict[str, Any] = {
                "class_name": l.kind,
                "name": l.name,
                "input_shape": (None,) + tuple(l.input_shape),
                "output_shape": (None,) + tuple(l.output_shape),
                "parameters": int(l.params),
                "trainable_parameters": int(l.trainable),
                "dtype": "float32",
                "reuse_factor": cfg.reuse_factor,
            }
            if l.kind == "Dense":
                d.update(neurons=l.units, use_bias=l.use_bias)
            elif l.kind in ("Conv1D", "Conv2D"):
                d.update(channels=int(l.input_shape[-1]), filters=l.units, kernel_size=l.kernel, strides=l.strides,
                         padding=l.padding, use_bias=l.use_bias)
            elif l.kind == "Activation":
                d["activation"] = l.activation
            elif l.kind == "Add":
                d["inbound_layers"] = [f"part{i}" for i in range(l.inputs)]
            if l.is_compute:
                d["reuse_factor"] = r
            out.append(d)
            if l.kind != "Activation" and l.activation != "linear":
                out.append({
                    "class_name": "Activation",
                    "input_shape": d["output_shape"], "output_shape": d["output_shape"],
                    "activation": l.activation, "parameters": 0, "trainable_parameters": 0,
                    "dtype": "float32", "reuse_factor": cfg.reuse_factor,
                })
        return out

    def hls_config(self, cfg: HlsConfig) -> Dict[str, Any]:
        """The hls4ml configuration dict rule4ml's `get_global_inputs` reads: board name and model-level strategy,
        precision and reuse factor."""
        return {"board": self.board.name, "model": {"strategy": cfg.strategy, "precision": cfg.precision, "reuse_factor": cfg.reuse_factor}}

    # -- batched prediction ---------------------------------------------------------------------------
    def _load(self):
        if self._wrapper is None:
            self.progress("loading rule4ml (torch, torch_geometric, then TensorFlow) ...")
            # Order matters: with a CUDA torch, TensorFlow imported before torch_geometric segfaulted.
            import torch
            import torch_geometric  # noqa: F401

            torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
            from rule4ml.models.wrappers import MultiModelWrapper

            w = MultiModelWrapper()
            w.load_default_models()
            self._wrapper = w
        return self._wrapper

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        core_idx = [i for i, (layers, _) in enumerate(requests)
                    if any(l.kind not in POOLING and l.kind not in REMOVED_BY_HLS4ML for l in layers)]
        preds = self.predict_rows([(self.rule4ml_layers(requests[i][0], requests[i][1]), requests[i][1]) for i in core_idx])
        out: List[Estimate] = []
        by_req = dict(zip(core_idx, preds))
        for i, (layers, cfg) in enumerate(requests):
            pooled = [l for l in layers if l.kind in POOLING]
            est = by_req.get(i)
            if est is None:
                est = Estimate(0, 0, 0, 0, 0, 0, "analytic")
            for l in pooled:
                est = est + analytic_estimate((l,), cfg, wrapper=False)
            if cfg.io_type != "io_parallel":
                est.extrapolated = [f"rule4ml: trained on io_parallel designs; this is {cfg.io_type}"] + list(est.extrapolated)
            out.append(est)
        return out

    def predict_rows(self, rows: Sequence[Tuple[List[Dict[str, Any]], HlsConfig]], chunk: int = 512) -> List[Estimate]:
        """rule4ml's six estimators on (rule4ml layer dicts, config) rows; each row as if predicted alone."""
        if not rows:
            return []
        w = self._load()
        from rule4ml.parsers.data_parser import get_global_inputs, get_layers_data, to_dataframe

        results: List[Estimate] = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            glob = [get_global_inputs(r, self.hls_config(c), hls4ml_version=HLS4ML_VERSION, vivado_version=VIVADO_VERSION) for r, c in part]
            seq = [get_layers_data(r) for r, _ in part]
            cols: Dict[str, List[float]] = {}
            built: Dict[str, tuple] = {}  # the six estimators share their input features: build them once
            for key, wrapper in w._models.items():
                spec = json.dumps([wrapper.global_numerical_labels, wrapper.sequential_numerical_labels,
                                   wrapper.global_categorical_maps, wrapper.sequential_categorical_maps],
                                  sort_keys=True, default=list)  # build_inputs leaves pandas arrays there
                if spec not in built:
                    df = to_dataframe(
                        meta_data=[], global_inputs=[dict(g) for g in glob], sequential_inputs=[list(s) for s in seq],
                        global_categorical_maps=wrapper.global_categorical_maps,
                        sequential_categorical_maps=wrapper.sequential_categorical_maps, targets=[],
                    )
                    built[spec] = _inputs(wrapper, df)
                pred = _forward(wrapper, *built[spec])
                samples = [_forward(wrapper, *built[spec], dropout_seed=n) for n in range(MC_SAMPLES)]
                for j, label in enumerate(key.split("-")):
                    f = label.lower()
                    cols[f] = [float(p[j]) for p in pred]
                    cols[f + ":mc"] = [[float(s[k][j]) for s in samples] for k in range(len(pred))]
            for i in range(len(part)):
                low, high = {}, {}
                for f in FIGURES:
                    mc = cols[f + ":mc"][i]
                    mean = sum(mc) / len(mc)
                    sd = (sum((x - mean) ** 2 for x in mc) / len(mc)) ** 0.5
                    low[f] = max(0.0, min(cols[f][i], mean - 2 * sd))
                    high[f] = max(cols[f][i], mean + 2 * sd)
                results.append(Estimate(
                    cols["lut"][i], cols["ff"][i], cols["dsp"][i], cols["bram"][i],
                    cols["cycles"][i], cols["interval"][i], "rule4ml", low=low, high=high,
                ))
        return results


def _inputs(wrapper, inputs_df):
    """The input tensors `BaseModelWrapper.predict_from_df` builds, the GNN's batch vector, and the rows
    its scaler reads."""
    import torch

    feature_labels = list(wrapper.global_numerical_labels) + list(wrapper.global_categorical_maps.keys())
    if len(wrapper.sequential_numerical_labels) > 0:
        seq_labels = list(wrapper.sequential_numerical_labels) + list(wrapper.sequential_categorical_maps.keys())
        inputs_df.loc[:, "sequential_inputs"] = inputs_df["sequential_inputs"].apply(lambda x: x[seq_labels])
        feature_labels += ["sequential_inputs"]
    inputs_df = inputs_df[feature_labels]
    inputs = wrapper.build_inputs(inputs_df)
    tensors = dict(zip(inputs.keys(), wrapper._process_input_dict(inputs)))
    seq = tensors[wrapper.model.sequential_input_keys["numerical"]]
    counts = (~(seq == 0.0).all(dim=-1)).sum(dim=1)
    # the batch vector TorchGNN.forward builds (graphs with no node are skipped there, and here)
    batch = torch.cat([torch.full((int(n),), i, dtype=torch.long) for i, n in enumerate(counts.tolist()) if n > 0])
    return tensors, batch, inputs_df.to_dict("records")


def _forward(wrapper, tensors, batch, records, dropout_seed: Optional[int] = None):
    """TorchGNN.forward with each graph normalised alone (GraphNorm given the batch vector), then the
    wrapper's scaler, as `predict_from_df` applies it. With `dropout_seed`, one MC-dropout sample: dropout
    layers on, torch's generator seeded (rule4ml's `mc_predict` does the same without the seed)."""
    import numpy as np
    import torch

    model = wrapper.model
    model.eval()
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.train()
    originals = [norm.forward for norm in model.norms]
    try:
        for norm, orig in zip(model.norms, originals):
            norm.forward = (lambda o: (lambda x, *a, **k: o(x, batch)))(orig)
        with torch.no_grad():
            pred = model(tensors).detach().cpu().numpy()
    finally:
        model.eval()
        for norm, orig in zip(model.norms, originals):
            norm.forward = orig
    if wrapper.scaler:
        pred = np.asarray([
            list(wrapper.scaler.inverse(dict(zip(wrapper.output_labels, row)), records[i]).values())
            for i, row in enumerate(pred)
        ])
    return pred

