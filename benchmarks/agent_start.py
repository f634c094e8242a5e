"""What one agent's start costs in CPU on this machine, and where it goes (issue 15: deployment is bounded by
the CPU of the boards' agent starts when every virtual board shares this machine's cores).

    .venv/bin/python benchmarks/agent_start.py [--runs 11] [--work build/agent-start]

Puts up one virtual board, deploys the one-partition plan of benchmarks/deploy_scale.py onto it, takes a copy
of the board's working folder (the agent's package, splitting's modules, part/ with config, secret, emulation library and fast model;
the copy listens on a free port) and takes the rack down. Then, `--runs` times each (medians): the CPU of
`python -c pass`, of `python -c "import numpy"`, and of the agent started as deploy starts it (`python -m
harness.agent part/agent.json`, OPENBLAS/OMP threads 1 as on a board) until its ready line, with and without the bytecode
cached; and, in one process, the CPU of each step of the start (imports, backend, fast-model check). CPU =
user + system of the process (rusage), or time.process_time() for the steps.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
ENV.pop("PYTHONDONTWRITEBYTECODE", None)  # a board's python caches bytecode (virtual boards' too)

STEPS = r'''
import json, os, sys, time
T = time.process_time
marks = [("start", T())]
def mark(name): marks.append((name, T()))
import numpy; mark("numpy")
import logging, socket, threading, queue, traceback, signal, collections, itertools, errno; mark("stdlib the agent imports")
sys.path.insert(0, "")  # the board's working folder, as `python -m` puts it first
from splitting import contract; mark("splitting/contract.py (dataclasses, re, typing)")
from harness.agent import wire; mark("harness/agent/wire.py (hashlib, hmac, secrets)")
from harness.agent import agent_config; mark("harness/agent/agent_config.py")
from harness.agent import agent, backends; mark("harness/agent/agent.py and what it imports")
cfg = agent_config.AgentConfig.from_dict(json.load(open("part/agent.json")))
logging.basicConfig(filename=os.devnull, level=logging.INFO)
a = agent.Agent(cfg, os.path.abspath("part")); mark("Agent(config)")
eb = backends.EmulationBackend(cfg.backend, os.path.abspath("part")); mark("emulation library loaded")
from harness.agent import fast_model; mark("fast_model.py, fast_kernel.py")
k = fast_model.Kernel("part/" + cfg.backend["kernel"]) if cfg.backend.get("kernel") else None
mark("compiled kernel loaded (ctypes)")
m = fast_model.FastModel.load("part/" + cfg.backend["model"], k); mark("fast model loaded (.npz)")
frames = fast_model.check_frames(m.in_type, int(cfg.backend["n_in"]), int(cfg.backend.get("check_frames", 4))); mark("check frames made")
assert fast_model.compare(m, eb.lib, frames) == 0; mark("fast model == emulation on them")
print(json.dumps([(n, t1 - t0) for (_, t0), (n, t1) in zip(marks, marks[1:])]))
'''


def cpu(argv, cwd=None, until_line=False) -> float:
    p = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE if until_line else subprocess.DEVNULL)
    if until_line:
        p.stdout.readline()
        p.terminate()
    _, _, ru = os.wait4(p.pid, 0)
    return ru.ru_utime + ru.ru_stime


def board_copy(work: Path) -> Path:
    """A copy of a freshly deployed virtual board's working folder, its agent listening on a free port."""
    from deploy_scale import SPLITRACK, chain_plan

    plan = chain_plan(1, work / "plan-1")
    rack, state = work / "rack.toml", work / "state"
    run = lambda *a: subprocess.run(SPLITRACK + list(a), cwd=ROOT, check=True, capture_output=True)  # noqa: E731
    run("rack", "up", "--n-boards", "1", "--out", str(rack), "--state", str(state))
    try:
        run("deploy", "--boards", str(rack), "--force", str(plan.root))
        homes = [json.loads((state / "rack.json").read_text())["pids"][0]["home"]]
        dst = work / "board"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(Path(homes[0]) / "splitrack", dst,
                        ignore=shutil.ignore_patterns("*.pid", "*.out", "*.log*", "running.json", "lease.json"))
    finally:
        run("rack", "down", str(rack))
    cfg = json.loads((dst / "part" / "agent.json").read_text())
    cfg["listen"]["port"] = 0
    (dst / "part" / "agent.json").write_text(json.dumps(cfg))
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "agent-start")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    a.work.mkdir(parents=True, exist_ok=True)
    print("deploying the one-partition plan to one virtual board and copying its working folder ...", flush=True)
    board = board_copy(a.work)
    py = sys.executable
    agent = [py, "-m", "harness.agent", "part/agent.json"]
    rows = {"python -c pass": [], "python -c 'import numpy'": [], "agent to its ready line, bytecode cached": [],
            "agent to its ready line, no bytecode (a fresh board)": []}
    steps = []
    for i in range(a.runs):
        rows["python -c pass"].append(cpu([py, "-c", "pass"]))
        rows["python -c 'import numpy'"].append(cpu([py, "-c", "import numpy"]))
        cpu(agent, board, until_line=True)  # writes the bytecode
        rows["agent to its ready line, bytecode cached"].append(cpu(agent, board, until_line=True))
        for cache in board.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        rows["agent to its ready line, no bytecode (a fresh board)"].append(cpu(agent, board, until_line=True))
        out = subprocess.run([py, "-c", STEPS], cwd=board, env=ENV, capture_output=True, text=True, check=True)
        steps.append(json.loads(out.stdout))
        print(f"  run {i + 1}/{a.runs}", flush=True)
    med = lambda v: sorted(v)[len(v) // 2] * 1000  # noqa: E731
    print(f"\nCPU ms, median of {a.runs} (this machine, {len(os.sched_getaffinity(0))} cores)")
    for k, v in rows.items():
        print(f"  {k:55s} {med(v):6.1f}")
    print("steps of the agent's start, in one process (after the interpreter's own start):")
    for j, (name, _) in enumerate(steps[0]):
        print(f"  {name:55s} {med([s[j][1] for s in steps]):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
