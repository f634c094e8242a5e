"""`splitrack lab export` and shared-rack files, without a coordinator: the exporter configuration is read
back by labgrid's own configuration loader and resource classes, and bad rack files are refused with the
file, line and field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.rack.lab_export import exporter_yaml, pdudaemon_port, place_specs
from harness.rack.rackfile import RackError, parse_rack

RACK = """\
[rack]
name = "lab"

[defaults]
key = "k"
kind = "pynq-z2"
pynq_version = "2.7.0"

[[boards]]
name = "pynq-a"
host = "192.168.2.101"
power_cycle = ["pduclient", "--daemon", "pdu-host", "--hostname", "pdu1", "--port", "3", "--command", "reboot"]

[[boards]]
name = "pynq-b"
host = "192.168.2.102"
port = 2222
data_port = 7711
user = "ci"
power_cycle = "pdu-ctl cycle --outlet 1"
"""


def test_exporter_config_loads_in_labgrid_and_describes_each_board(tmp_path):
    from labgrid.remote.config import ResourceConfig
    from labgrid.resource import NetworkService
    from labgrid.resource.power import PDUDaemonPort

    rack = parse_rack(RACK, tmp_path / "boards.toml")
    text, notes = exporter_yaml(rack)
    (tmp_path / "exporter.yaml").write_text(text)
    data = ResourceConfig(str(tmp_path / "exporter.yaml")).data  # jinja2 + YAML, as labgrid-exporter reads it
    assert sorted(data) == ["pynq-a", "pynq-b"]
    for b in rack.boards:
        group = dict(data[b.name])
        for res, port in (("ssh", b.port), ("agent", b.data_port)):
            params = dict(group[res])
            assert params.pop("cls") == "NetworkService"
            ns = NetworkService(target=None, name=None, **params)  # labgrid's validators accept it
            assert (ns.address, ns.username, ns.port) == (b.host, b.user, port)
    # the pduclient command fits labgrid's PDUDaemonPort; the other command has no labgrid resource: a note
    power = dict(data["pynq-a"]["power"])
    assert power.pop("cls") == "PDUDaemonPort"
    pdu = PDUDaemonPort(target=None, name=None, **power)
    assert (pdu.host, pdu.pdu, pdu.index) == ("pdu-host", "pdu1", 3)
    assert "power" not in data["pynq-b"]
    assert len(notes) == 1 and "pynq-b" in notes[0] and "pdu-ctl" in notes[0]


def test_place_specs_tag_rack_kind_board_and_pynq_version(tmp_path):
    specs = place_specs(parse_rack(RACK, tmp_path / "boards.toml"))
    assert [s.name for s in specs] == ["lab-pynq-a", "lab-pynq-b"]
    assert specs[1].tags == {"rack": "lab", "kind": "pynq-z2", "board": "pynq-b", "pynq_version": "2.7.0"}
    assert specs[1].matches == ["*/pynq-b/*"]


def test_pduclient_forms():
    assert pdudaemon_port(["/usr/bin/pduclient", "--daemon=h", "--hostname=p", "--port=12"]) == ("h", "p", 12)
    assert pdudaemon_port(["pduclient", "--daemon", "h"]) is None  # no PDU or port: does not fit
    assert pdudaemon_port(["ykushcmd", "-d", "1"]) is None
    assert pdudaemon_port(None) is None


LAB = """\
[rack]
name = "shared"
coordinator = "lab-server:20408"
tags = { rack = "lab", pynq_version = "3.0.1" }

[defaults]
key = "~/.ssh/pynq_ed25519"
python = "/usr/local/share/pynq-venv/bin/python3"
sudo = true
"""


def test_shared_rack_file_names_coordinator_tags_and_defaults(tmp_path):
    r = parse_rack(LAB, tmp_path / "lab.toml")
    assert r.boards == [] and r.lab is not None
    assert r.lab.coordinator == "lab-server:20408"
    assert r.lab.tags == {"rack": "lab", "pynq_version": "3.0.1"}
    assert r.lab.defaults["key"] == Path("~/.ssh/pynq_ed25519").expanduser()
    assert r.lab.defaults["sudo"] is True


@pytest.mark.parametrize("change, where", [
    (('coordinator = "lab-server:20408"', 'coordinator = "lab-server"'), "lab.toml:3: rack.coordinator"),
    (('coordinator = "lab-server:20408"', 'coordinator = "h:99999"'), "lab.toml:3: rack.coordinator"),
    (('tags = { rack = "lab", pynq_version = "3.0.1" }', 'tags = { Rack = "lab" }'), "lab.toml:4: rack.tags"),
    (("sudo = true", 'host = "10.0.0.1"'), "lab.toml:9: defaults.host"),
    (('key = "~/.ssh/pynq_ed25519"', 'workdir = "x"'), "defaults.key: missing"),
    (("sudo = true", "sudo = 1"), "lab.toml:9: sudo"),
    (("sudo = true", 'sudo = true\n\n[[boards]]\nname = "a"'), "boards: a rack with a coordinator"),
])
def test_bad_shared_rack_files_are_refused_with_line_and_field(tmp_path, change, where):
    with pytest.raises(RackError) as e:
        parse_rack(LAB.replace(*change), tmp_path / "lab.toml")
    assert where in str(e.value)


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "lab.toml").write_text(LAB)
    cases = [
        (["lab", "status", "--coordinator", "not an address"], "is not HOST:PORT"),
        (["lab", "export", str(tmp_path / "missing.toml")], "not found"),
        (["lab", "export", str(tmp_path / "lab.toml")], "names a coordinator"),
    ]
    for args, says in cases:
        r = subprocess.run([sys.executable, "-m", "harness.cli.commands", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_says_when_no_coordinator_answers(tmp_path):
    from lab_rig import free_port

    r = subprocess.run([sys.executable, "-m", "harness.cli.commands", "lab", "status", "--coordinator",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Could not connect to coordinator" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
