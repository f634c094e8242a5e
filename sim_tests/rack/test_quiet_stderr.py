"""What imported libraries warn about never reaches a user's terminal: commands that touch SSH (asyncssh and
paramiko import `cryptography`, whose releases since 43 warn about DSA at import) print only splitrack's own
lines on stderr, whatever version of those libraries is installed. The warnings go to the library log."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.rack.virtual_rack import rack_down, rack_up
from child_env import child_env

REPO = Path(__file__).resolve().parents[2]
# a line of Python's warnings module ("path:12: SomeWarning: text") or the source line it quotes under it
WARNING_LINE = re.compile(r"^\S*:\d+: \w*Warning: |^\s+warnings\.warn\(|Warning: ")


def _cli(tmp_path, *args):
    # the user cache of the other tests: the plan's hls4ml projects are compiled once for all of them
    return subprocess.run([sys.executable, "-m", "harness.cli.commands", *map(str, args)], capture_output=True,
                          text=True, timeout=1200, cwd=REPO, env=child_env())


def _warning_lines(text):
    return [line for line in text.splitlines() if WARNING_LINE.search(line)]


def test_bad_rack_file_stderr_is_one_line_without_warnings(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text("boards = [5]\n")
    r = _cli(tmp_path, "rack", "check", f)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [line for line in r.stderr.strip().splitlines()
                                            if line.startswith("splitrack rack: error: ")], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not _warning_lines(r.stderr), r.stderr


def test_stopped_rack_and_deploy_carry_no_warning_lines(tmp_path):
    rack = tmp_path / "rack.toml"
    rack_up(1, rack, state=tmp_path / "state", progress=lambda s: None)
    try:
        r = _cli(tmp_path, "rack", "check", rack)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not _warning_lines(r.stderr), r.stderr
    finally:
        rack_down(rack)
    r = _cli(tmp_path, "rack", "check", rack)  # the rack is stopped now: one line that says so
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not _warning_lines(r.stderr), r.stderr


def test_deploy_stderr_carries_no_warning_line(tmp_path, fc_plan_dir, rack_file):
    r = _cli(tmp_path, "deploy", fc_plan_dir, "--boards", rack_file)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not _warning_lines(r.stderr), r.stderr
    from harness.rack.deploy import undeploy
    from harness.rack.rackfile import load_rack

    undeploy(load_rack(rack_file))


def test_library_warning_goes_to_the_log_and_own_warnings_stay(tmp_path):
    """In a fresh process: a warning raised inside a library module lands in the library log, not on stderr;
    one raised by splitrack's own code is still shown."""
    code = ("from splitting.quiet_tensorflow import quiet, library_log_path; quiet()\n"
            "import warnings, json\n"
            "exec(compile('import warnings\\nwarnings.warn(\"from a library\", UserWarning)', "
            "'/usr/lib/python3/dist-packages/somelib/__init__.py', 'exec'))\n"
            "exec(compile('import warnings\\nwarnings.warn(\"from splitrack\", UserWarning)', "
            f"'{REPO}/splitting/somewhere.py', 'exec'))\n"
            "print(library_log_path())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=child_env(SPLITRACK_CACHE=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr
    assert "from a library" not in r.stderr and "from splitrack" in r.stderr, r.stderr
    log = Path(r.stdout.strip().splitlines()[-1])
    assert "UserWarning: from a library" in log.read_text()


@pytest.fixture(scope="module")
def fc_plan_dir(tmp_path_factory):
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    folder = tmp_path_factory.mktemp("fc_seq")
    write_plan(plan, models, folder)
    return folder
