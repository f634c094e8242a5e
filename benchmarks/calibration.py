"""Every estimator measured on the calibration set of published hls4ml results (splitting/data/hls4ml_published.csv).

Per estimator and figure: rows with a published figure, sMAPE, the worst row, and how often the estimator's
range holds the published figure; per layer kind the mean sMAPE over LUT, FF, DSP and BRAM, and the estimator
with the lowest one (the planner's default for that kind). The analytic model is measured leave-one-out
(splitting/accuracy.py says how); rule4ml through the same cached adapter the planner uses (first run: torch,
TensorFlow and rule4ml load, about a minute).

    .venv/bin/python benchmarks/calibration.py [--out benchmarks/out] [--write-choice]

Writes calibration.json and calibration.png (published against estimated, per resource, log-log, with the
ranges) in --out; --write-choice also writes the per-kind choice to splitting/data/estimator_choice.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitting import accuracy  # noqa: E402
from splitting.calibration import load_rows, sources  # noqa: E402
from splitting.estimators import CHOICE  # noqa: E402
from splitting.intervals import not_cross_validated  # noqa: E402

FIGS = ("lut", "ff", "dsp", "bram", "cycles", "interval")


def log(msg: str) -> None:
    print(f"[calibration] {msg}", file=sys.stderr, flush=True)


def table(scores) -> list:
    lines = [f"{'estimator':<9} {'figure':<8} {'rows':>4} {'sMAPE':>7} {'worst':>7}  {'worst row':<22} {'in range':>9}",
             "-" * 78]
    for name, sc in scores.items():
        for f in FIGS:
            s = sc[f]
            if not s.n:
                continue
            lines.append(f"{name:<9} {f:<8} {s.n:>4} {100 * s.smape:>6.1f}% {100 * s.worst:>6.1f}%  {s.worst_row:<22} "
                         f"{s.covered:>3}/{s.n:<3}")
    return lines


def plot(scores, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))
    colours = {"analytic": "tab:blue", "rule4ml": "tab:orange"}
    for ax, f in zip(axes.flat, FIGS):
        lo_all, hi_all = [], []
        for name, sc in scores.items():
            s = sc[f]
            pts = [(a, p, lo, hi) for _, a, p, lo, hi in s.pairs if a > 0 and p > 0]
            if not pts:
                continue
            a, p, lo, hi = (list(x) for x in zip(*pts))
            err = [[max(0.0, pi - li) for pi, li in zip(p, lo)], [max(0.0, hi_ - pi) for pi, hi_ in zip(p, hi)]]
            ax.errorbar(a, p, yerr=err, fmt="o", ms=4, alpha=0.75, capsize=2, color=colours.get(name),
                        label=f"{name}: sMAPE {100 * s.smape:.0f}%, in range {s.covered}/{s.n}")
            lo_all += a + p
            hi_all += a + p
        if lo_all:
            lo, hi = min(lo_all) / 1.5, max(hi_all) * 1.5
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.plot([lo, hi], [lo * 2, hi * 2], ":", color="grey", lw=0.6)
            ax.plot([lo, hi], [lo / 2, hi / 2], ":", color="grey", lw=0.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
        unit = {"cycles": "latency, cycles", "interval": "initiation interval, cycles", "bram": "BRAM18"}.get(f, f.upper())
        ax.set_title(unit)
        ax.set_xlabel("published (hls4ml C-synthesis)")
        ax.set_ylabel("estimated (bars: range)")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Estimators against published hls4ml results (dashed: equal; dotted: 2x either way)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--write-choice", action="store_true", help="write the per-kind choice to " + str(CHOICE))
    ap.add_argument("--skip-rule4ml", action="store_true", help="measure the analytic model only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows()
    log(f"{len(rows)} rows from {', '.join(f'{k} ({v})' for k, v in sources(rows).items())}")
    t0 = time.perf_counter()
    preds = {"analytic": accuracy.analytic_predictions(rows)}
    log(f"analytic (leave-one-out) in {time.perf_counter() - t0:.1f} s")
    if not args.skip_rule4ml:
        t0 = time.perf_counter()
        preds["rule4ml"] = accuracy.rule4ml_predictions(rows, progress=log)
        log(f"rule4ml in {time.perf_counter() - t0:.1f} s")
    scores = {name: accuracy.score(p) for name, p in preds.items()}
    kinds = {name: accuracy.kind_errors(p) for name, p in preds.items()}
    chosen = accuracy.choose(kinds)
    lines = table(scores)
    lines += ["", "mean sMAPE over LUT, FF, DSP, BRAM of the rows that isolate one layer kind:",
              f"{'kind':<9}" + "".join(f"{n:>10}" for n in preds) + "   default"]
    for k in accuracy.KINDS:
        lines.append(f"{k:<9}" + "".join(f"{('-' if kinds[n][k] is None else f'{100 * kinds[n][k]:.1f}%'):>10}" for n in preds)
                     + f"   {chosen[k]}")
    nv = not_cross_validated(rows)
    lines.append(f"analytic rows measured in-sample (each alone informs a coefficient): {', '.join(nv) or 'none'}")
    print("\n".join(lines))
    report = {
        "rows": len(rows), "sources": sources(rows), "not_cross_validated": nv,
        "scores": {n: {f: {"n": s.n, "smape": s.smape, "worst": s.worst, "worst_row": s.worst_row, "covered": s.covered,
                           "pairs": s.pairs} for f, s in sc.items()} for n, sc in scores.items()},
        "kind_errors": kinds, "choice": chosen,
    }
    (out / "calibration.json").write_text(json.dumps(report, indent=1))
    plot(scores, out / "calibration.png")
    log(f"wrote {out / 'calibration.json'} and {out / 'calibration.png'}")
    if args.write_choice:
        if "rule4ml" not in preds:
            log("--write-choice needs rule4ml measured too (drop --skip-rule4ml)")
            return 2
        CHOICE.write_text(json.dumps({"choice": chosen, "kind_errors": kinds, "measured_by": "benchmarks/calibration.py",
                                      "rows": len(rows)}, indent=1) + "\n")
        log(f"wrote {CHOICE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
