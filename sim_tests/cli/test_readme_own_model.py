"""The tutorial "Your own model, from training to a hardware test" (docs/tutorials/own-model.md), run as it
stands: its two Python files written out, its commands run one after another in a fresh folder (a user's own
64-128-64-10 model, planned over exactly 3 boards, deployed to a 3-board virtual rack, checked by the user's
test with the plugin's fixtures). The rack is stopped whatever happens. The README's "your model in six
commands" must be the same six commands."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "docs" / "tutorials" / "own-model.md"
README = REPO / "README.md"
README_TITLE = "## Your model in six commands"


def commands_of(text: str) -> list:
    """The `$ ` lines of the shell (unlabelled) code blocks of `text`."""
    return [ln[2:] for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lang == ""
            for ln in body.splitlines() if ln.startswith("$ ")]


def example():
    """(files {name: text}, commands) of the tutorial: Python blocks start with `# name.py:`, commands are the
    `$ ` lines of its shell block."""
    blocks = re.findall(r"```(\w*)\n(.*?)```", TUTORIAL.read_text(), re.S)
    files = {}
    commands = []
    for lang, body in blocks:
        if lang == "python":
            name = re.match(r"# (\S+\.py):", body).group(1)
            files[name] = body
        else:
            commands += [ln[2:] for ln in body.splitlines() if ln.startswith("$ ")]
    return files, commands


def test_readme_example_parses():
    files, commands = example()
    assert set(files) == {"train_model.py", "test_my_model.py"}
    assert "splitrack plan model.keras --n-boards 3 -o plan" in commands
    assert commands[-1].startswith("splitrack rack down")
    assert "reference" not in " ".join(commands)  # the user's own model, not one of ours


def test_readme_shows_the_tutorial_s_six_commands():
    text = README.read_text()
    assert README_TITLE in text, "the README lost its six commands"
    section = text.split(README_TITLE, 1)[1].split("\n## ", 1)[0]
    assert commands_of(section) == example()[1]
    assert len(example()[1]) == 6


def test_readme_example_runs_on_a_virtual_rack(tmp_path):
    files, commands = example()
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    bindir = str(Path(sys.executable).parent)  # `python`, `splitrack` and `pytest` of this venv
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    outputs = {}
    try:
        for cmd in commands:
            if cmd.startswith("pytest ") and not (Path(bindir) / "pytest").exists():
                cmd_run = "python -m " + cmd  # a venv that shares another's packages has no pytest script
            else:
                cmd_run = cmd
            r = subprocess.run(cmd_run, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
            outputs[cmd] = r.stdout + r.stderr
            assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    finally:
        if (tmp_path / "rack.toml").exists():
            subprocess.run(["splitrack", "rack", "down", "rack.toml"], cwd=tmp_path, env=env, capture_output=True,
                           timeout=120)
    plan_out = outputs["splitrack plan model.keras --n-boards 3 -o plan"]
    assert "3 board(s)" in plan_out
    assert "PASS" in outputs["splitrack verify plan --data digits"]
    test_out = outputs["pytest -m hw --boards rack.toml test_my_model.py"]
    assert re.search(r"\b2 passed\b", test_out) and "skipped" not in test_out, test_out[-2000:]
    # TensorFlow's start-up lines stay out of what splitrack and its plugin show (train_model.py is the user's)
    ours = [o for c, o in outputs.items() if not c.startswith("python ")]
    assert not any("oneDNN custom operations" in o or "cuda drivers" in o for o in ours)
