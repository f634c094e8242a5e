"""`splitrack nightly`: what a cron job runs. Bench, add to the history, detect regressions, write the dashboard.

    splitrack nightly --boards rack.toml --db results.sqlite [--plan plan/] [--frames 500] [--data FILE.npz] [-o site/]
                      [--label NAME]

Without --plan it benches the reference plan: the digits FC network cut after fc1 and fc2 (three boards),
made once and kept under <cache>/nightly/ (splitting.user_cache). The bench JSON of every night is kept beside the
dashboard (site/runs/). The run goes into the history under its label (default: the model's name); until
its series has 3 earlier runs it says that it cannot judge yet. Exit status 0 when no regression is in
effect, 1 when one is (each printed with label, model, plan, rack, board, hop, size, and the run and
commit it started with), 2 on bad input.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Tuple


from harness.jobs import bench as bench_cmd
from harness.results import dashboard, history, regress
from harness.results import series as series_mod
from splitting.user_cache import cache_root

CACHE = cache_root()


def default_plan(progress: Callable[[str], None] = print):
    """The reference plan: digits FC cut after fc1 and fc2 (made once, then loaded)."""
    from splitting.plan import Plan, PlanError

    folder = CACHE / "nightly" / "digits-fc-3"
    if (folder / "plan.json").is_file():
        try:
            return Plan.load(folder)
        except PlanError:
            pass  # a half-written or stale folder: make it again
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    progress(f"making the reference plan (digits FC cut after fc1 and fc2) in {folder}")
    plan, models = split_model(reference_model("fc"), at=("fc1", "fc2"))
    write_plan(plan, models, folder)
    return Plan.load(folder)


def run_file(runs: Path, time: str, plan_hash: str) -> Path:
    """A new file name in `runs` for one night's bench JSON: the run's time to the microsecond and the plan
    hash, claimed with an exclusive create (two runs in one second, or at one instant, get two files; a
    second-resolution name let the later one overwrite the earlier)."""
    runs.mkdir(parents=True, exist_ok=True)
    stamp = time[:26].replace(":", "").replace(".", "_")
    for n in range(1, 1000):
        path = runs / f"{stamp}-{plan_hash}{'' if n == 1 else f'-{n}'}.json"
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            continue
    raise OSError(f"{runs}: 999 runs of plan {plan_hash} at {time}: clean the folder")


def nightly(boards: Path, db: Path, out: Path, plan_dir: Path = None, frames: int = 500, rate: float = None,
            min_change: float = 0.05, progress: Callable[[str], None] = print,
            lease_wait: float = 0.0, label: str = None, data: str = "auto",
            commit: str = None) -> List[Tuple[regress.Alarm, history.RunInfo]]:
    """One night: returns the regressions in effect for this series (label, model, rack), one Alarm per hop and
    run, each with the run where it starts. Changes the controls explain (the machine's) and changes only this
    run shows are printed, and fail nothing. `data` is bench's --data (splitting.eval_data; a bad one is a
    UserError before any board is touched)."""
    from splitting.plan import Plan

    from harness.rack.lab_lease import leased_rack
    from harness.rack.rackfile import load_rack

    rack_file = load_rack(boards)
    plan = Plan.load(plan_dir) if plan_dir else default_plan(progress)
    bench_cmd.bench_eval_data(plan, 2, data)  # a bad --data fails here, before the rack is leased
    runs = Path(out) / "runs"
    try:
        with leased_rack(rack_file, len(plan.partitions), progress=progress) as rack:  # a shared rack: leased
            doc = bench_cmd.bench(plan, rack, frames=frames, rate=rate, progress=progress, lease_wait=lease_wait,
                                  label=label, data=data, commit=commit)
    except bench_cmd.BenchIncomplete as e:  # what was measured is kept where the night's result goes
        path = bench_cmd.write_incomplete(e.doc, run_file(runs, e.doc["time"], plan.hash))
        raise bench_cmd.BenchIncomplete(f"{e}; wrote {path}", e.doc) from None
    progress(bench_cmd.format_bench(doc))
    bench_json = run_file(runs, doc["time"], plan.hash)
    bench_cmd.save(doc, bench_json)
    with history.History(db) as h:
        run, rows, samples = history.parse_bench(doc)
        run_id, new = h.add_run(run, rows, samples)
        n_runs = len(h.runs())
        check = regress.check(h, regress.WATCH, min_relative=min_change)
        runs = {r.run_id: r for r in h.run_infos()}
    progress(f"history: run {run_id} ({run.label!r}), {new} rows added to {db} ({n_runs} runs)")
    for label, model, rack, n in check.unjudged:
        if (label, model, rack) == run.series:
            progress(f"cannot judge {label!r} yet: {regress.too_few_runs(n)}")
    for e in series_mod.events_at(check.events.get(run.series, []), run_id):
        progress(f"event on the series at this run: {e.describe()}")
    mine = [c for c in check.changes if c.key.series == run.series and c.latest]
    for al in regress.alarms([c for c in mine if c.explained or not c.confirmed]):  # said, but fails nothing
        progress(al.describe(runs.get(al.primary.run_id)))
    index, _ = dashboard.write(db, out)
    progress(f"dashboard: {index}")
    return [(al, runs.get(al.primary.run_id)) for al in regress.alarms([c for c in check.live
                                                                        if c.key.series == run.series])]
