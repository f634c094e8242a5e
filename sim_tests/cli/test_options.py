"""One meaning per option name: the rack file is `--boards FILE` in every command that takes one, a number of
boards is `--n-boards N`; the old spellings (`rack up --boards 5`, `plan --boards 3`, `history add --rack`)
keep working for a release, with one line on stderr."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.commands import main


def _parser(command: str) -> argparse.ArgumentParser:
    """The parser `splitrack COMMAND` gets (its module's configure), without running anything."""
    from harness.cli.commands import COMMANDS

    module = next(m for name, m, _ in COMMANDS if name == command)
    p = argparse.ArgumentParser(prog=f"splitrack {command}")
    importlib.import_module(module).configure(p)
    return p


def _option(p: argparse.ArgumentParser, flag: str):
    for a in p._actions:
        if flag in a.option_strings:
            return a
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                found = _option(sub, flag)
                if found is not None:
                    return found
    return None


@pytest.mark.parametrize("command", ["deploy", "doctor", "run", "bench", "nightly", "demo", "history"])
def test_the_rack_file_is_boards_file_everywhere(command):
    a = _option(_parser(command), "--boards")
    assert a is not None and a.type is Path and a.metavar == "FILE", (command, a)
    assert _option(_parser(command), "--rack") is None or command == "history"


@pytest.mark.parametrize("argv, dest, value", [
    (["rack", "up", "--n-boards", "3"], "n_boards", 3),
    (["plan", "model.keras", "--n-boards", "3"], "boards_exact", 3),
])
def test_a_number_of_boards_is_n_boards(argv, dest, value, capsys):
    args = _parser(argv[0]).parse_args(argv[1:])
    assert getattr(args, dest) == value
    assert capsys.readouterr().err == ""
    assert _option(_parser(argv[0]), "--n-boards").type is int


@pytest.mark.parametrize("argv, dest, value, new", [
    (["rack", "up", "--boards", "4"], "n_boards", 4, "--n-boards"),
    (["plan", "model.keras", "--boards", "2"], "boards_exact", 2, "--n-boards"),
    (["history", "add", "x.json", "--rack", "lab"], "rack_name", "lab", "--boards FILE"),
])
def test_old_spellings_work_with_one_line_on_stderr(argv, dest, value, new, capsys):
    args = _parser(argv[0]).parse_args(argv[1:])
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is deprecated, use " + new in err[0], err
    assert "--boards N" not in _parser(argv[0]).format_help()  # hidden from --help


def _pytest_benchmark_json(tmp_path: Path) -> Path:
    """A real pytest-benchmark JSON file whose benchmark names no rack."""
    (tmp_path / "test_b.py").write_text("def test_hop(benchmark):\n    benchmark(sum, range(100))\n")
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_b.py"),
                        f"--benchmark-json={out}"], cwd=tmp_path, capture_output=True, text=True,
                       env=__import__("child_env").child_env())
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_history_add_takes_the_racks_name_from_its_rack_file(tmp_path, capsys):
    out = _pytest_benchmark_json(tmp_path)
    rack = tmp_path / "lab.toml"  # a rack that is not running: only its name is read
    rack.write_text('[rack]\nname = "lab7"\n\n[[boards]]\nname = "b0"\nhost = "10.0.0.2"\nkind = "pynq-z2"\n'
                    'key = "/nowhere/id_ed25519"\n')
    db = tmp_path / "r.sqlite"
    assert main(["history", "add", str(out), "--db", str(db), "--boards", str(rack)]) == 0
    assert main(["history", "add", str(out), "--db", str(db), "--rack", "lab8"]) == 0
    from harness.results.history import History

    with History(db) as h:
        assert [r.rack for r in h.run_infos()] == ["lab7", "lab8"]
    assert main(["history", "add", str(out), "--db", str(db), "--boards", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: cannot read the rack file" in capsys.readouterr().err
