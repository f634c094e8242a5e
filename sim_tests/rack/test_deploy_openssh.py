"""A board is just an SSH host: the same deployment against a stock OpenSSH sshd configured as a board.

The sshd runs on a loopback port with its own config, host key and authorized_keys in a temp folder. The
rack mixes it with two virtual boards: the plan's first partition runs behind OpenSSH, the others on the
asyncssh boards, and frames cross between them.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.jobs.doctor import doctor
from harness.rack.deploy import deploy, undeploy
from harness.rack.health import check_board
from harness.rack.rackfile import Board, Rack
from harness.measure.stream import Pipeline
from harness.rack.virtual_rack import start_board, stop_board

SSHD = "/usr/sbin/sshd"

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is not installed "
                                "(scripts/setup-system.sh installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o755)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    (d / "authorized_keys").chmod(0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowUsers {getpass.getuser()}
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
    board = Board(name="openssh", host="127.0.0.1", port=port, user=getpass.getuser(), kind="virtual-pynq-z2",
                  key=d / "client_key", known_hosts=d / "known_hosts", host_key_policy="trust-on-first-use",
                  data_port=_free_port(), python=sys.executable, workdir=str(d / "board"))
    yield board
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def others(tmp_path_factory):
    state = tmp_path_factory.mktemp("vboards")
    started = [start_board(state, f"vb{i}") for i in range(2)]
    yield [b for b, _ in started]
    for _, p in started:
        stop_board(p)


def test_openssh_board_deploys_and_streams(sshd, others, tmp_path_factory):
    from splitting.chain import emulation_runner, run_chain
    from splitting.plan import Plan
    from splitting.reference_models import digits_data, model_inputs, reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    folder = tmp_path_factory.mktemp("plan")
    write_plan(plan, models, folder)
    plan = Plan.load(folder)

    # first contact: trust-on-first-use records OpenSSH's host key; from then on, strict checking
    assert not sshd.known_hosts.exists()
    h = check_board(sshd)
    assert h.ok, h.reason
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in sshd.known_hosts.read_text()
    strict = replace(sshd, host_key_policy="strict")

    rack = Rack("mixed", [strict] + others)
    dep = deploy(plan, rack)
    assert dep.placed["s0"].board == "openssh" and dep.placed["s0"].flashed
    assert (Path(sshd.workdir) / "part" / "partition.so").is_file()

    x = model_inputs("fc", digits_data()[2][:30]).astype(np.float32)
    with Pipeline(dep.wiring) as pipe:
        out = pipe.stream(x, timeout=10).outputs().reshape(len(x), -1)
    assert np.array_equal(out, run_chain(plan, x, emulation_runner(plan)).reshape(len(x), -1))

    again = deploy(plan, rack)  # unchanged: OpenSSH's sha256sum agrees, nothing is flashed
    assert again.flashed == [] and again.placed["s0"].pid == dep.placed["s0"].pid
    # doctor on a stock system's tools (df, free, date of this machine, not the virtual boards' stand-ins)
    report = doctor(rack, plan)
    assert report.ok, report.lines()
    f = report.boards[0].facts  # the OpenSSH board's
    assert abs(f["free_disk_mib"] - (shutil.disk_usage(sshd.workdir).free >> 20)) < 64  # others write meanwhile
    assert f["data_port"].startswith(f"{strict.data_port} agent of s0") and f["free_memory_mib"] > 64
    assert abs(f["clock_offset_ms"]) <= f["clock_error_ms"] + 0.1  # one machine, one clock: the bound holds
    assert undeploy(rack) == 3
