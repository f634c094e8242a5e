"""Planning time of `splitrack plan` for models of ~12k, ~73k and ~1M parameters, with a cold and a warm
estimate cache, against the seed's brute-force grid of rule4ml predictions on the same model.

Every figure is the wall time of a fresh process, as a user sees it (imports included), plus the planner's own
in-process search time. The seed method, reimplemented here as the issue describes it: every set of
sequential cuts, every partition built as a Keras model and sent through rule4ml's public `predict` with the
grid of configurations, a partition's boards counted as max(resource %) // 100 + 1, no cache.

    .venv/bin/python benchmarks/plan_speed.py [--out benchmarks/out] [--skip-seed]

Writes plan_speed.json and plan_speed.png in --out. Not a test: timings depend on the machine and its load,
which the JSON records (load average, CPU count).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GRID_RF = (1, 2, 4, 8, 16, 32, 64)
GRID_STRATEGY = ("Latency", "Resource")
PRECISION = "ap_fixed<16,6>"


def log(msg: str) -> None:
    print(f"[plan_speed] {msg}", file=sys.stderr, flush=True)


def make_models(folder: Path) -> dict:
    """The two reference models (digits FC ~12k, CNN ~73k) and a ~1M-parameter MLP (784-1024-256-10)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    from splitting.reference_models import reference_model

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("fc", "cnn"):
        m = reference_model(name)
        out[name] = (folder / f"ref_{name}.keras", m.count_params())
        m.save(out[name][0])
    keras.utils.set_random_seed(0)
    big = keras.Sequential([keras.Input((784,)), layers.Dense(1024, activation="relu", name="h1"),
                            layers.Dense(256, activation="relu", name="h2"), layers.Dense(10, name="out"),
                            layers.Activation("softmax", name="softmax")], name="mlp_1m")
    out["mlp1m"] = (folder / "mlp_1m.keras", big.count_params())
    big.save(out["mlp1m"][0])
    return out


def run_plan(model: Path, cache: Path) -> dict:
    env = dict(os.environ, SPLITRACK_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    p = subprocess.run([PY, "-m", "harness.cli.commands", "plan", str(model), "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"splitrack plan {model} failed: {p.stderr[-2000:]}")
    plan = json.loads(p.stdout)
    m = re.search(r"searched in ([0-9.]+) s: (\d+) .*?(\d+) from the cache, (\d+) computed", p.stderr)
    return {"wall_s": round(wall, 2), "search_s": float(m.group(1)), "estimates": int(m.group(2)),
            "cached": int(m.group(3)), "computed": int(m.group(4)), "boards": plan["boards"],
            "latency_us": plan["latency_us"], "plan": [p_["layers"] for p_ in plan["partitions"]]}


def seed_bruteforce(model_path: str) -> dict:
    """The seed's method (see the module docstring); runs in its own process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.perf_counter()
    import torch  # noqa: F401  (before TensorFlow: see splitting/rule4ml_adapter.py)
    import torch_geometric  # noqa: F401
    from rule4ml.models.wrappers import MultiModelWrapper

    import keras

    from splitting.layerspec import load_layers
    from splitting.search import boundaries

    w = MultiModelWrapper()
    w.load_default_models()
    model = keras.models.load_model(model_path, compile=False)
    _, specs = load_layers(model_path)
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    bounds = boundaries(specs)
    grid = [{"board": "pynq-z2", "model": {"strategy": s, "precision": PRECISION, "reuse_factor": r}}
            for s in GRID_STRATEGY for r in GRID_RF]
    predictions = failures = 0
    best = None
    inner = bounds[1:-1]
    for r in range(len(inner) + 1):
        for cuts in itertools.combinations(inner, r):
            edges = [0, *cuts, len(layers)]
            total = 0
            for i, j in zip(edges, edges[1:]):
                seg = [type(l).from_config(l.get_config()) for l in layers[i:j]]
                sub = keras.Sequential([keras.Input(tuple(specs[i].input_shape))] + seg)
                for new, old in zip(seg, layers[i:j]):
                    new.set_weights(old.get_weights())
                try:
                    df = w.predict(sub, hls_configs=grid, hls4ml_versions="1.1.0", vivado_versions="2019.1")
                except Exception:  # rule4ml cannot parse pooling/dropout under Keras 3
                    failures += 1
                    total = None
                    break
                predictions += len(grid)
                pct = df[["LUT (%)", "FF (%)", "DSP (%)", "BRAM (%)"]].max(axis=1)
                total += int((pct // 100 + 1).min())
            if total is not None and (best is None or total < best[0]):
                best = (total, list(cuts))
    return {"seconds": round(time.perf_counter() - t0, 2), "predictions": predictions, "failed_partitions": failures,
            "boards": best[0] if best else None, "cuts": best[1] if best else None}


def run_seed(model: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([PY, __file__, "--seed-run", str(model)], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"seed brute force on {model} failed: {p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(wall, 2)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    series = [("cold cache", lambda r: r["cold"]["wall_s"]), ("warm cache", lambda r: r["warm"]["wall_s"]),
              ("seed brute-force grid", lambda r: r["seed"]["wall_s"] if r.get("seed") else None)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.26
    for k, (label, get) in enumerate(series):
        xs, ys = [], []
        for i, n in enumerate(names):
            v = get(results[n])
            if v is not None:
                xs.append(i + (k - 1) * width)
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=label)
        for b, v, n in zip(bars, ys, [n for n in names if get(results[n]) is not None]):
            text = f"{v:.1f}"
            if label.startswith("seed") and results[n]["seed"].get("boards") is None:
                text += "\nno plan:\nrule4ml failed\non pooling"
            ax.annotate(text, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n{results[n]['params']:,} params\nload avg {results[n]['loadavg']}" for n in names], fontsize=8)
    ax.set_ylabel("wall time of the command, s (log)")
    ax.axhline(30, color="grey", ls=":", lw=1)
    ax.axhline(2, color="grey", ls=":", lw=1)
    ax.text(-0.45, 30, "30 s target (cold, 1M)", fontsize=7, va="bottom", ha="left", color="grey")
    ax.text(-0.45, 2, "2 s target (warm, 1M)", fontsize=7, va="bottom", ha="left", color="grey")
    ax.set_ylim(top=max(v for r in results.values() for v in (r["cold"]["wall_s"], (r.get("seed") or {}).get("wall_s", 0))) * 8)
    ax.set_title(f"splitrack plan vs the seed's brute-force grid (rule4ml 0.2.0, pynq-z2)\n"
                 f"wall time of a fresh process, imports included; {os.cpu_count()} CPUs shared with other jobs", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--skip-seed", action="store_true", help="do not time the seed's brute-force grid")
    ap.add_argument("--replot", action="store_true", help="redraw plan_speed.png from plan_speed.json")
    ap.add_argument("--seed-run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_run:
        print(json.dumps(seed_bruteforce(args.seed_run)))
        return 0
    out = Path(args.out)
    if args.replot:
        plot(json.loads((out / "plan_speed.json").read_text())["results"], out / "plan_speed.png")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log("building the models (reference models are trained once and cached)")
    tmp = tempfile.TemporaryDirectory()  # model files are inputs, not results: they stay out of the repository
    models = make_models(Path(tmp.name))
    results = {}
    for name, (path, params) in models.items():
        r = {"params": params, "loadavg": round(os.getloadavg()[0], 1)}
        with tempfile.TemporaryDirectory() as cache:
            log(f"{name}: cold cache")
            r["cold"] = run_plan(path, Path(cache))
            log(f"{name}: warm cache")
            r["warm"] = run_plan(path, Path(cache))
        if not args.skip_seed:
            log(f"{name}: seed brute-force grid")
            r["seed"] = run_seed(path)
        results[name] = r
        log(f"{name}: {json.dumps(r)}")
    (out / "plan_speed.json").write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=1) + "\n")
    plot(results, out / "plan_speed.png")
    print(f"{'model':<7}{'params':>10}{'cold s':>9}{'(search)':>9}{'warm s':>8}{'(search)':>9}{'seed s':>9}{'boards':>7}{'seed boards':>12}")
    for n, r in results.items():
        s = r.get("seed") or {}
        print(f"{n:<7}{r['params']:>10,}{r['cold']['wall_s']:>9.1f}{r['cold']['search_s']:>9.2f}{r['warm']['wall_s']:>8.2f}"
              f"{r['warm']['search_s']:>9.2f}{s.get('wall_s', float('nan')):>9.1f}{r['cold']['boards']:>7}{str(s.get('boards')):>12}")
    log(f"wrote {out / 'plan_speed.json'} and {out / 'plan_speed.png'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
