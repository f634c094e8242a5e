"""Names are data: a partition or board name that a shell or a path could read as anything but a name is
refused where the plan or the rack file is loaded, in one line; a plan without its content hash too."""
import json
import subprocess
import sys

import pytest

from identity_plan import identity_plan
from harness.rack.rackfile import RackError, parse_rack
from splitting.names import is_valid_name
from splitting.plan import Plan, PlanError

BAD = ["s1$(touch X)", "s1;rm -rf ~", "a b", "../up", "-rf", ".", "", "s1\n", "x" * 65, "ñ", "s1`id`", "a/b"]


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_by_the_one_pattern(name):
    assert not is_valid_name(name)


def test_good_names_pass():
    for name in ("s0", "n12", "join", "pynq-a", "board_1.lab", "x" * 64, "0"):
        assert is_valid_name(name)


def _saved_plan(tmp_path):
    plan = identity_plan(2, shape=(8,))
    plan.save(tmp_path / "plan")
    return tmp_path / "plan" / "plan.json"


def _rename(d, old, new):
    for p in d["partitions"]:
        if p["name"] == old:
            p["name"] = new
    for s in d["stages"]:
        s["partitions"] = [new if n == old else n for n in s["partitions"]]
    for c in d["links"]:
        for k in ("src", "dst"):
            if c[k] == old:
                c[k] = new


@pytest.mark.parametrize("name", ["s1$(touch X)", "s1\n", "../s1"])
def test_a_plan_with_an_injected_partition_name_is_refused(tmp_path, name):
    f = _saved_plan(tmp_path)
    d = json.loads(f.read_text())
    _rename(d, "s1", name)
    f.write_text(json.dumps(d))
    with pytest.raises(PlanError, match="is not a valid name"):  # checked before (whatever) the hash says
        Plan.load(f.parent)


def test_a_plan_without_its_hash_is_refused_in_one_line(tmp_path):
    f = _saved_plan(tmp_path)
    d = json.loads(f.read_text())
    del d["hash"]
    f.write_text(json.dumps(d))
    with pytest.raises(PlanError, match="has no content hash"):
        Plan.load(f.parent)
    d["hash"] = "0" * 16
    f.write_text(json.dumps(d))
    with pytest.raises(PlanError, match="does not match its content"):
        Plan.load(f.parent)


def test_cli_refuses_a_plan_without_hash_with_exit_2_and_no_traceback(tmp_path):
    f = _saved_plan(tmp_path)
    d = json.loads(f.read_text())
    del d["hash"]
    f.write_text(json.dumps(d))
    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "deploy", str(f.parent), "--boards", "boards.toml"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "has no content hash" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["pynq$(id)", "a b", "-x"])
def test_a_rack_file_with_an_injected_board_name_is_refused(tmp_path, name):
    text = f'[[boards]]\nname = {json.dumps(name)}\nhost = "127.0.0.1"\nkind = "virtual-pynq-z2"\nkey = "id"\n'
    with pytest.raises(RackError, match="is not a valid name"):
        parse_rack(text, tmp_path / "r.toml")


def test_hls_project_name_never_reaches_hls4mls_shell(tmp_path):
    """hls4ml's build runs the project name through a shell on the host: a name that is not plain is refused
    before anything is converted or compiled (the partition name check at plan load is the first fence)."""
    from splitting.errors import UserError
    from splitting.hls import compiled

    with pytest.raises(UserError, match="not a valid name"):
        compiled(tmp_path / "missing.keras", "0" * 64, {}, {}, "sr_s1$(touch X)", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not list(tmp_path.rglob("X"))
