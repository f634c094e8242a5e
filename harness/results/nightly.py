"""`splitrack nightly`: what a cron job runs. Bench, add to the history, detect regressions, write the dashboard.

    splitrack nightly --boards rack.toml --db results.sqlite [--plan plan/] [--frames 500] [-o site/]

Without --plan it benches the reference plan: the digits FC network cut after fc1 and fc2 (three boards),
made once and kept under .splitrack-cache/nightly/. The bench JSON of every night is kept beside the
dashboard (site/runs/). Exit status 0 when no regression is in effect, 1 when one is (each printed: which
metric, which hop, since which run and commit, by how much), 2 on bad input.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List


from harness.measure import bench as bench_cmd
from harness.results import dashboard, history, regress

CACHE = Path(os.environ.get("SPLITRACK_CACHE", ".splitrack-cache"))


def default_plan(progress: Callable[[str], None] = print):
    """The reference plan: digits FC cut after fc1 and fc2 (made once, then loaded)."""
    from splitting.plan import Plan, PlanError

    folder = CACHE / "nightly" / "digits-fc-3"
    if (folder / "plan.json").is_file():
        try:
            return Plan.load(folder)
        except PlanError:
            pass  # a half-written or stale folder: make it again
    from splitting.reference import reference_model
    from splitting.split import split_model, write_plan

    progress(f"making the reference plan (digits FC cut after fc1 and fc2) in {folder}")
    plan, models = split_model(reference_model("fc"), at=("fc1", "fc2"))
    write_plan(plan, models, folder)
    return Plan.load(folder)


def nightly(boards: Path, db: Path, out: Path, plan_dir: Path = None, frames: int = 500, rate: float = None,
            min_change: float = 0.05, progress: Callable[[str], None] = print) -> List[regress.Change]:
    """One night: returns the regressions in effect for this rack, machine and plan."""
    from splitting.plan import Plan

    from harness.rack.rackfile import load_rack

    rack = load_rack(boards)
    plan = Plan.load(plan_dir) if plan_dir else default_plan(progress)
    doc = bench_cmd.bench(plan, rack, frames=frames, rate=rate, progress=progress)
    progress(bench_cmd.format_bench(doc))
    runs = Path(out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = doc["time"][:19].replace(":", "")
    bench_json = runs / f"{stamp}-{plan.hash}.json"
    bench_cmd.save(doc, bench_json)
    with history.History(db) as h:
        new = h.add(history.rows_from_bench(doc))
        n_runs = len(h.runs())
        changes = regress.detect(h, regress.WATCH, min_relative=min_change)
    progress(f"history: {new} rows added to {db} ({n_runs} runs)")
    mine = [c for c in changes if (c.key.rack, c.key.machine, c.key.plan_hash) == (doc["rack"], doc["machine"], plan.hash)]
    index, _ = dashboard.write(db, out)
    progress(f"dashboard: {index}")
    return regress.live_regressions(mine)
