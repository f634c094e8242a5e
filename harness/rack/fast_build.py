"""What a virtual board's fast backend loads, made on the host: the fast model's file and its compiled kernel.

The fast model (harness/agent/fast_model.py, shipped) runs a partition's ops on raw integers; this module reads
those ops from hls4ml's converted graph (`harness.cosim.ops`, as the RTL cosimulation does), writes them to the
model file the agent loads (`FastModel.save`), and compiles the kernel's C source once per source hash into the
user cache (the agent's loader is harness/agent/fast_kernel.py). `deploy` ships both beside the partition's
emulation library (`board_files`). A layer the fast model does not compute raises `NotModelled`, and the
partition stays on its hls4ml emulation.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from harness.agent.fast_kernel import FILE as KERNEL_FILE
from harness.agent.fast_model import FORMAT, STEPS, FastModel, NotModelled
from harness.cosim.bitexact import activation_table, softmax_tables
from harness.cosim.ops import UnsupportedLayer, partition_ops
from splitting.contract import FixedType
from splitting.hls import project_dir
from splitting.user_cache import cache_root

MODEL_FILE = "partition.fast.npz"  # the model's name on a board, beside the emulation library
# bump when what model_of reads from hls4ml's graph changes (the cached model file is keyed by it):
# 2: Resource-strategy weights read untransposed (version 1 read them as hls4ml stores them, transposed)
OPS_VERSION = 2

# lookup tables an op kind carries (raw integers of their types, computed as hls4ml's C++ initialises them)
TABLES = {
    "softmax": lambda op: dict(zip(("exp_table", "inv_table"), softmax_tables(op))),
    "sigmoid": lambda op: {"table": activation_table(op)},
    "tanh": lambda op: {"table": activation_table(op)},
}


def model_from_ops(ops, kernel=None) -> FastModel:
    """The fast model of an op list (harness.cosim.ops.Op objects). Raises NotModelled (naming the op) for a
    kind the fast model does not compute."""
    meta, arrays = [], {}
    for op in ops:
        if op.kind != "input":
            STEPS.handler(op.kind, op.name)  # refused here, before any table is computed
        params = {}
        for k, v in (op.params or {}).items():
            if k == "types":
                params.update({tk: str(tv) for tk, tv in v.items()})
            elif isinstance(v, FixedType):
                params[k] = str(v)
            else:
                params[k] = v
        if op.weight is not None:
            arrays[op.name + "/weight"] = np.asarray(op.weight, np.int64)
            arrays[op.name + "/bias"] = np.asarray(op.bias, np.int64)
            params["wtype"], params["btype"] = str(op.wtype), str(op.btype)
        if op.accum is not None:
            params["accum"] = str(op.accum)
        if op.kind in TABLES:
            arrays.update({f"{op.name}/{k}": v for k, v in TABLES[op.kind](op).items()})
        meta.append({"kind": op.kind, "name": op.name, "out_shape": list(op.out_shape), "out": str(op.out),
                     "params": params})
    return FastModel(meta, arrays, kernel)


def model_of(plan, name: str, kernel=None) -> FastModel:
    """The fast model of one partition of a plan (converts it with hls4ml). Raises NotModelled."""
    try:
        return model_from_ops(partition_ops(plan, name, tables=True), kernel)
    except UnsupportedLayer as e:
        raise NotModelled(str(e))


def board_files(plan, name: str, emulation_cfg: dict, log=None) -> Tuple[Dict[str, str], dict]:
    """What a virtual board needs to run partition `name` on its fast model.

    Returns (files, backend): files maps board file names to local files to upload beside the emulation
    library, backend is the agent's backend config. When the partition has a layer the fast model does not
    compute, files is empty and backend is `emulation_cfg` with a "note" saying why (also sent to `log`).
    The model is written once into the partition's hls4ml cache folder (same key: same model and config);
    the compiled kernel (build_kernel, cached by its source's hash) goes with it when this host can build it.
    """
    part = plan.partition(name)
    if part.input_shapes or part.output_shapes:  # the fast model computes one stream in, one out
        return {}, _emulation_only(emulation_cfg, name, "the partition reads or writes several tensors", log)
    folder = project_dir(plan, name)
    path = os.path.join(str(folder), "fast_model-v%d.%d.npz" % (FORMAT, OPS_VERSION))
    if not os.path.isfile(path):
        try:
            model = model_of(plan, name)
        except NotModelled as e:
            return {}, _emulation_only(emulation_cfg, name, str(e), log)
        tmp = "%s.%d.tmp.npz" % (path[:-4], os.getpid())
        model.save(tmp)
        os.replace(tmp, path)  # parallel deploys of the same partition: the last complete file wins
    files, backend = {MODEL_FILE: path}, dict(emulation_cfg, kind="fast", model=MODEL_FILE)
    lib = build_kernel(log)
    if lib is not None:
        files[KERNEL_FILE] = str(lib)
        backend["kernel"] = KERNEL_FILE
    return files, backend


def _emulation_only(emulation_cfg: dict, name: str, why: str, log=None) -> dict:
    """The emulation backend config with a note saying why the fast model is not used (the agent reports it,
    deploy prints it)."""
    note = "fast model not used (%s): the board runs hls4ml's emulation library" % why
    (log or logging.getLogger("splitrack.deploy")).info("partition %s: %s", name, note)
    return dict(emulation_cfg, note=note)


# --- the kernel: its C source and build ----------------------------------------------------------------
SOURCE = r"""
#include <stdint.h>

/* out[m*N + n] = wrap(bias[n] + sum_k (x[m*K + k] * w[k*N + n]) >> s), for every m < M, n < N, where wrap
   keeps the low `width` bits (two's complement when is_signed): ap_fixed's AP_WRAP assignment to accum_t.
   The caller guarantees that every product fits in int32; >> of a negative int32 is an arithmetic shift
   (floor) on every compiler this targets (GCC and Clang document it); the sum is kept in uint32, which wraps
   modulo 2^32 without undefined behaviour, and is exact modulo 2^width. The loop over n is what the compiler
   vectorises: on x86-64 an AVX2 clone is chosen at load time where the CPU has it (1.5-1.7x faster here
   than SSE2). Rows of x that are zero (ReLU outputs) are skipped. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void trunc_dense_i32(const int32_t *x, const int32_t *w, const int32_t *bias, int32_t *out,
                     int64_t M, int64_t K, int64_t N, int32_t s, int32_t width, int32_t is_signed)
{
    const int up = 32 - width;
    const uint32_t mask = width >= 32 ? 0xffffffffu : ((1u << width) - 1u);
    for (int64_t m = 0; m < M; m++) {
        uint32_t *a = (uint32_t *)(out + m * N);
        const int32_t *xr = x + m * K;
        for (int64_t n = 0; n < N; n++)
            a[n] = (uint32_t)bias[n];
        for (int64_t k = 0; k < K; k++) {
            const int32_t xv = xr[k];
            if (xv == 0)
                continue;
            const int32_t *wr = w + k * N;
            for (int64_t n = 0; n < N; n++)
                a[n] += (uint32_t)((xv * wr[n]) >> s);
        }
        if (is_signed) {
            if (up > 0)
                for (int64_t n = 0; n < N; n++)
                    out[m * N + n] = (int32_t)(a[n] << up) >> up;
        } else {
            for (int64_t n = 0; n < N; n++)
                a[n] &= mask;
        }
    }
}
"""
COMMAND = ("cc", "-O3", "-shared", "-fPIC")  # portable code: the library may be cached for other CPUs too


def build_kernel(log=None) -> Optional[Path]:
    """Compile SOURCE once into the user cache (host side) -> path of the library, or None when no C compiler
    works here (the reason goes to `log`). Keyed by the sha256 of the source and the command."""
    log = log or logging.getLogger("splitrack.deploy")
    key = hashlib.sha256(("\0".join(COMMAND) + "\0" + SOURCE).encode()).hexdigest()[:16]
    folder = cache_root() / "fast_kernel" / key
    path = folder / KERNEL_FILE
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(folder)) as tmp:
        src = os.path.join(tmp, "fast_kernel.c")
        out = os.path.join(tmp, KERNEL_FILE)
        with open(src, "w") as f:
            f.write(SOURCE)
        try:
            r = subprocess.run(list(COMMAND) + ["-o", out, src], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            log.info("fast model kernel not built (%s): virtual boards run the numpy model", e)
            return None
        if r.returncode != 0:
            log.info("fast model kernel not built (%s exit %d: %s): virtual boards run the numpy model",
                     COMMAND[0], r.returncode, (r.stderr.strip().splitlines() or [""])[-1])
            return None
        os.replace(out, str(path))  # parallel builds: the last complete file wins
    return path
