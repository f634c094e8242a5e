"""Rack files, the SSH client and the virtual rack: validation messages, quoting, host keys, health."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.rack.health import check_board, check_rack
from harness.rack.rackfile import Board, Rack, RackError, load_rack, parse_rack, write_rack
from harness.rack.ssh import BoardError, connect
from harness.rack.virtual_rack import rack_down, rack_up, start_board, stop_board

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[rack]
name = "t"

[defaults]
key = "id"
kind = "virtual-pynq-z2"

[[boards]]
name = "a"
host = "127.0.0.1"
port = 2201
data_port = 7701

[[boards]]
name = "b"
host = "127.0.0.1"
port = 2202
data_port = 7702
"""


def _err(text: str, tmp_path: Path) -> str:
    with pytest.raises(RackError) as e:
        parse_rack(text, tmp_path / "r.toml")
    return str(e.value)


def test_example_boards_toml_parses():
    rack = parse_rack((REPO / "boards.toml").read_text(), REPO / "boards.toml")
    assert rack.name == "lab"
    assert [b.name for b in rack.boards] == ["pynq-a", "pynq-b", "pynq-c", "pynq-d", "pynq-e"]
    a, e = rack.boards[0], rack.boards[4]
    assert a.kind == "pynq-z2" and a.user == "xilinx" and a.sudo and a.data_port == 7700
    assert a.power_cycle == ["pdu-ctl", "cycle", "--outlet", "1"]
    assert e.port == 2222 and e.power_cycle is None
    assert a.key == Path("~/.ssh/pynq_ed25519").expanduser()


def test_defaults_merge_and_relative_key(tmp_path):
    rack = parse_rack(GOOD, tmp_path / "r.toml")
    assert [b.name for b in rack.boards] == ["a", "b"]
    assert all(b.key == tmp_path / "id" for b in rack.boards)
    assert rack.boards[1].line == 14  # the [[boards]] header line


@pytest.mark.parametrize("edit, where", [
    (lambda t: t.replace('kind = "virtual-pynq-z2"', 'kind = "zedboard"'), ":6: kind"),
    (lambda t: t.replace("port = 2202", "port = 70000"), ":17: port"),
    (lambda t: t.replace('name = "b"', 'name = "a"'), ":14: name"),
    (lambda t: t.replace('host = "127.0.0.1"\nport = 2202', 'port = 2202'), ":14: host"),
    (lambda t: t.replace("data_port = 7702", "data_port = 7702\ncolour = 3"), ":19: colour"),
    (lambda t: t.replace("port = 2202", "port = 2201"), ":14: port"),
    (lambda t: t.replace("data_port = 7701", "data_port = 2201"), ":8: data_port"),
])
def test_errors_name_line_and_field(tmp_path, edit, where):
    msg = _err(edit(GOOD), tmp_path)
    assert where in msg, msg


def test_passwords_are_refused(tmp_path):
    msg = _err(GOOD.replace("port = 2201", "port = 2201\npassword = \"xilinx\""), tmp_path)
    assert "r.toml:12: boards[0].password:" in msg and "key" in msg
    msg = _err(GOOD.replace('key = "id"', 'key = "id"\npassphrase = "x"'), tmp_path)
    assert "r.toml:6: defaults.passphrase:" in msg


def test_bad_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in _err("[[boards]\nname=", tmp_path)
    with pytest.raises(RackError, match="rack up"):
        load_rack(tmp_path / "nope.toml")
    (tmp_path / "r.toml").write_text(GOOD)
    with pytest.raises(RackError, match=r"r.toml:5: key: .* not found"):
        load_rack(tmp_path / "r.toml")


def test_write_then_load_round_trip(tmp_path):
    (tmp_path / "id").write_text("x")
    rack = parse_rack(GOOD, tmp_path / "r.toml")
    rack.boards[0].power_cycle = ["relay", "1 2"]
    write_rack(rack, tmp_path / "out.toml", comment="written by a test")
    again = load_rack(tmp_path / "out.toml")
    for a, b in zip(rack.boards, again.boards):
        assert (a.name, a.host, a.port, a.data_port, a.kind, a.key, a.power_cycle) == \
               (b.name, b.host, b.port, b.data_port, b.kind, b.key, b.power_cycle)


# --- a live virtual rack -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vrack(tmp_path_factory):
    d = tmp_path_factory.mktemp("vrack")
    rack = rack_up(2, d / "rack.toml", state=d / "state", progress=lambda s: None)
    yield rack
    rack_down(d / "rack.toml")


def test_cli_rack_up_check_down(tmp_path):
    exe = [sys.executable, "-m", "harness.cli.commands"]
    out = tmp_path / "rack.toml"
    r = subprocess.run(exe + ["rack", "up", "--boards", "2", "--out", str(out), "--state", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    try:
        rack = load_rack(out)
        assert [b.kind for b in rack.boards] == ["virtual-pynq-z2"] * 2
        assert len({b.port for b in rack.boards}) == 2
        r2 = subprocess.run(exe + ["rack", "up", "--boards", "2", "--out", str(out)], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
        assert r2.returncode == 2 and "running virtual rack" in r2.stderr
        r3 = subprocess.run(exe + ["rack", "check", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r3.returncode == 0 and r3.stdout.count(": ok") == 2, r3.stdout + r3.stderr
    finally:
        r = subprocess.run(exe + ["rack", "down", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and "stopped 2" in r.stdout
    for b in rack.boards:  # nothing listens any more, and the state folder is gone
        with pytest.raises(OSError):
            socket.create_connection((b.host, b.port), timeout=2).close()
    assert not (tmp_path / "s").exists()
    r = subprocess.run(exe + ["rack", "down", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and "already stopped" in r.stdout  # idempotent (sim_tests/rack/test_rack_state.py)


def test_arguments_are_quoted_not_interpreted(vrack):
    b = vrack.boards[0]
    nasty = "$(touch pwned); `touch pwned2` && touch pwned3 'x' \"y\" \\ *"
    with connect(b) as c:
        r = c.run(["printf", "%s", nasty])
        assert r.stdout == nasty
        r = c.run(["ls"])
        assert "pwned" not in r.stdout
        r = c.run(["sh", "-c", "exit 3"], check=False)
        assert r.status == 3
        with pytest.raises(BoardError, match=r"stage command: .*status 4"):
            c.run(["sh", "-c", "echo oops >&2; exit 4"])


def test_command_timeout_is_bounded(vrack, sched_latency):
    with connect(vrack.boards[0]) as c:
        t0 = time.monotonic()
        with pytest.raises(BoardError, match="did not finish within 1 s"):
            c.run(["sleep", "30"], timeout=1)
        elapsed = time.monotonic() - t0
    # the 1 s command timeout fires: not before, and not after the 30 s command either. After it: the wait
    # for the exit status (which ends at the deadline) and the wake-ups of opening, running and closing an SSH channel (tens of round
    # trips through paramiko's transport thread and the board's server, counted as 200)
    assert 1.0 <= elapsed <= sched_latency.bound(1.0 + 0.005, wakeups=200), (elapsed, sched_latency)
    assert elapsed < 30.0


def test_trust_on_first_use_then_strict(vrack, tmp_path):
    b = vrack.boards[1]
    kh = tmp_path / "known_hosts"
    tofu = Board(**{**b.__dict__, "known_hosts": kh, "host_key_policy": "trust-on-first-use"})
    with connect(tofu) as c:
        assert c.run(["echo", "hi"]).stdout.strip() == "hi"
    assert f"[{b.host}]:{b.port} ssh-ed25519 " in kh.read_text()
    strict = Board(**{**tofu.__dict__, "host_key_policy": "strict"})
    with connect(strict) as c:  # the recorded key is accepted
        assert c.run(["true"]).status == 0
    # a changed key is refused even with trust-on-first-use
    kh.write_text(_other_key_line(b))
    with pytest.raises(BoardError, match="stage host-key: .*changed"):
        connect(tofu)


def _other_key_line(b: Board) -> str:
    import asyncssh

    k = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
    return f"[{b.host}]:{b.port} {k[0]} {k[1]}\n"


def test_health_check_quarantines_low_memory_board(vrack, tmp_path):
    starved, proc = start_board(tmp_path / "s", "starved", memory_mb=512, memory_free_mb=20)
    try:
        hs = check_rack(Rack("t", list(vrack.boards) + [starved]))
        by = {h.board: h for h in hs}
        assert all(by[b.name].ok for b in vrack.boards), [h.line() for h in hs]
        assert not by["starved"].ok and "20 MiB of memory" in by["starved"].reason
        assert by[vrack.boards[0].name].details["free_memory_mib"] == 384
    finally:
        stop_board(proc)
    h = check_board(starved, timeout=2)  # stopped: quarantined for the connect stage
    assert not h.ok and h.reason.startswith("connect")


def test_power_cycle_brings_a_hung_board_back(tmp_path):
    import signal
    from dataclasses import replace

    hung, proc = start_board(tmp_path / "s", "hung")
    os.kill(proc.pid, signal.SIGSTOP)  # hung: TCP accepted by the kernel, SSH never answers
    try:
        # the "power switch" of this virtual board: let the process run again
        b = replace(hung, power_cycle=["kill", "-CONT", str(proc.pid)])
        [before] = check_rack(Rack("t", [b]), timeout=2)
        assert not before.ok and "did not speak SSH" in before.reason
        [after] = check_rack(Rack("t", [b]), timeout=2, recover=True, wait=30)
        assert after.ok and after.details["power_cycled"] is True
        broken = replace(hung, power_cycle=["false"])
        os.kill(proc.pid, signal.SIGSTOP)
        [still] = check_rack(Rack("t", [broken]), timeout=2, recover=True, wait=1)
        assert not still.ok and still.reason.startswith("power-cycle: `false` exited with 1")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_board(proc)


def test_known_hosts_are_parsed_once_per_version_of_the_file_and_looked_up_as_paramiko_does(tmp_path):
    """ssh._known_keys caches the parsed known_hosts file; a line added (trust on first use) or a key
    replaced (a re-imaged board) is seen at the next connection, and "[host]:port" and hashed entries match
    as paramiko's own lookup matches them."""
    import paramiko

    from harness.rack.ssh import _known_keys

    k1, k2, k3 = (paramiko.Ed25519Key.from_private_key_file(str(_new_key(tmp_path / f"k{i}"))) for i in range(3))
    kh = tmp_path / "known_hosts"
    assert _known_keys(kh, "[127.0.0.1]:2200") == {}  # no file yet
    kh.write_text(f"[127.0.0.1]:2200 ssh-ed25519 {k1.get_base64()}\n")
    assert _known_keys(kh, "[127.0.0.1]:2200") == {"ssh-ed25519": k1}
    assert _known_keys(kh, "[127.0.0.1]:2201") == {}
    hashed = paramiko.HostKeys.hash_host("[127.0.0.1]:2201")
    with open(kh, "a") as f:
        f.write(f"{hashed} ssh-ed25519 {k2.get_base64()}\n")
    assert _known_keys(kh, "[127.0.0.1]:2201") == {"ssh-ed25519": k2}
    kh.write_text(f"[127.0.0.1]:2200 ssh-ed25519 {k3.get_base64()}\n")  # the board was re-imaged
    assert _known_keys(kh, "[127.0.0.1]:2200") == {"ssh-ed25519": k3}
    assert _known_keys(kh, "[127.0.0.1]:2201") == {}


def _new_key(path):
    """A new ed25519 private key file (written with asyncssh: paramiko cannot generate ed25519 keys)."""
    import asyncssh

    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    return path
