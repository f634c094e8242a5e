"""A stopped virtual rack says so: `rack down` is idempotent, every command given the rack file of a stopped
rack says it is stopped and how to start it (not "key ... not found"), and `rack up` onto a running rack
refuses before it starts anything."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.commands import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stopped_rack(tmp_path, capsys):
    """The rack file of a 1-board virtual rack that was started and stopped again."""
    out = tmp_path / "rack.toml"
    assert main(["rack", "up", "--boards", "1", "--out", str(out)]) == 0
    try:
        capsys.readouterr()
        assert main(["rack", "up", "--boards", "1", "--out", str(out)]) == 2  # onto a running rack
        o, e = capsys.readouterr()
        assert "starting" not in o and "running virtual rack" in e and "rack down" in e
    finally:
        assert main(["rack", "down", str(out)]) == 0
    assert "stopped 1 virtual boards" in capsys.readouterr().out
    return out


def _says_stopped(err: str, rack: Path) -> None:
    assert "this virtual rack is stopped" in err
    assert f"splitrack rack up --n-boards 1 --out {rack}" in err
    assert "not found" not in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_rack_down_twice_is_fine(stopped_rack, capsys):
    assert main(["rack", "down", str(stopped_rack)]) == 0
    assert capsys.readouterr().out.strip() == f"{stopped_rack}: already stopped"


def test_commands_on_a_stopped_rack_say_it_is_stopped(stopped_rack, fc_plan, capsys):
    plan = str(fc_plan.root)
    for argv in (["rack", "check", str(stopped_rack)],
                 ["deploy", plan, "--boards", str(stopped_rack)],
                 ["run", plan, "--boards", str(stopped_rack), "--data", "digits", "--frames", "2"],
                 ["bench", plan, "--boards", str(stopped_rack), "--frames", "2"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        _says_stopped(capsys.readouterr().err, stopped_rack)


def test_pytest_boards_on_a_stopped_rack_says_it_is_stopped(stopped_rack, tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\n@pytest.mark.hw\ndef test_x(rack):\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--boards", str(stopped_rack),
                        str(tmp_path / "test_x.py")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 4, r.stdout + r.stderr  # a usage error, not a pass or a skip
    assert "this virtual rack is stopped" in r.stderr and "splitrack rack up --n-boards 1" in r.stderr
    assert "not found" not in r.stderr
