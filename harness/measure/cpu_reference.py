"""The CPU reference, measured in the same run as the rack: what the rack's latency is worth.

- Keras on the host CPU at batch 1 (one frame, the latency a CPU gives) and at the stream's batch (as many
  frames per call as the rack holds in flight: the CPU's best case for throughput). The model is called
  through a TensorFlow graph traced once per batch size, the fastest plain way to run a Keras model.
- The hls4ml emulation of the whole model (bit-accurate C simulation of the unsplit design), per frame.
- Accuracy on labelled data: the rack's outputs, Keras and the emulation against the labels, and how often
  the rack's class agrees with Keras'.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from harness.measure.attribution import stats


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 3) -> np.ndarray:
    """Wall time (ns) of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats, dtype=np.int64)
    for i in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = time.perf_counter_ns() - t0
    return out


def _entry(ns: np.ndarray, batch: int) -> Dict[str, float]:
    s = stats(ns)
    s["batch"] = batch
    s["per_frame_us"] = s["p50"] / batch
    s["throughput_hz"] = batch / (s["p50"] / 1e6) if s["p50"] > 0 else float("nan")
    return s


def keras_timings(model, x: np.ndarray, batches: Sequence[int], repeats: int = 200) -> Dict[str, Dict[str, float]]:
    """Per call latency of the Keras model at each batch size (us stats, plus per-frame and frames/s)."""
    import tensorflow as tf

    out = {}
    for b in sorted(set(int(b) for b in batches)):
        xb = np.resize(np.asarray(x, dtype=np.float32), (b,) + tuple(x.shape[1:]))
        fn = tf.function(lambda v: model(v, training=False),
                         input_signature=[tf.TensorSpec((b,) + tuple(x.shape[1:]), tf.float32)])
        t = tf.constant(xb)
        n = max(20, repeats // max(1, b // 8))  # large batches: fewer calls, same order of total time
        out[f"keras batch {b}"] = _entry(time_calls(lambda: fn(t).numpy(), n), b)
    return out


def emulation_timings(lib, x: np.ndarray, repeats: int = 200) -> Dict[str, float]:
    """Per frame latency of an hls4ml emulation library (EmulationLib.run, one frame per call)."""
    frames = np.asarray(x).reshape(len(x), -1)
    i = [0]

    def one():
        lib.run(frames[i[0] % len(frames)])
        i[0] += 1

    return _entry(time_calls(one, repeats), 1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of frames whose arg-max output equals the label; outputs (n, ...) and labels (n,) of ints."""
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), axis=1) == labels))


def reference(plan, x: np.ndarray, stream_batch: int, rack_outputs: Optional[np.ndarray] = None,
              labels: Optional[np.ndarray] = None, repeats: int = 200,
              progress: Callable[[str], None] = lambda s: None) -> Dict[str, Dict]:
    """CPU timings and accuracies for a plan: {"cpu": {name: stats}, "accuracy": {name: fraction}}."""
    from splitting import hls
    from splitting.graph import load_model

    src = plan.path(plan.model.get("source", "source.keras"))
    progress(f"CPU reference: Keras ({src.name}) at batch 1 and {stream_batch}, hls4ml emulation")
    model = load_model(src)  # registers HGQ2's layers first; a file that does not load is one line
    xin = np.asarray(x, dtype=np.float32).reshape((len(x),) + tuple(plan.model["input_shape"]))
    cpu = keras_timings(model, xin, (1, stream_batch), repeats)
    emu = hls.monolithic_emulation(plan)
    cpu["hls4ml emulation"] = emulation_timings(emu, xin, repeats)
    acc: Dict[str, float] = {}
    if labels is not None:
        n = len(labels)
        keras_out = model.predict(xin[:n], verbose=0, batch_size=256)
        acc["keras"] = accuracy(keras_out, labels)
        acc["hls4ml emulation"] = accuracy(emu.predict(xin[:n]), labels)
        if rack_outputs is not None:
            rack = rack_outputs[:n]
            acc["rack"] = accuracy(rack, labels)
            acc["rack agrees with keras"] = float(np.mean(np.argmax(rack.reshape(n, -1), 1) == np.argmax(keras_out, 1)))
    return {"cpu": cpu, "accuracy": acc}


def format_reference(ref: Dict[str, Dict], rack_reports: Dict[str, Dict]) -> str:
    """CPU figures with the rack's beside them, as ratios (rack / CPU: above 1 the rack is slower)."""
    lines = ["CPU reference (us per call; ratio = rack / CPU)"]
    single = rack_reports.get("single", {}).get("stats", {}).get("e2e", {})
    stream = rack_reports.get("stream", {})
    for name, s in ref["cpu"].items():
        line = f"  {name:22s} p50 {s['p50']:9.1f}  p99 {s['p99']:9.1f}  {s['throughput_hz']:9.0f} frames/s"
        if s["batch"] == 1 and single:
            line += f"   rack single-frame p50 {single['p50']:.1f} us = {single['p50'] / s['p50']:.2f}x"
        elif stream and s["batch"] > 1:
            line += (f"   rack stream {stream['throughput_hz']:.0f} frames/s = "
                     f"{stream['throughput_hz'] / s['throughput_hz']:.2f}x the CPU's throughput")
        lines.append(line)
    if ref["accuracy"]:
        lines.append("accuracy on the labelled data: " + ", ".join(f"{k} {v:.4f}" for k, v in ref["accuracy"].items()))
    return "\n".join(lines)
