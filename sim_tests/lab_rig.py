"""A shared lab on loopback for the lab tests: labgrid's own coordinator and exporter (their real programs, as
subprocesses), a virtual rack of N boards, the exporter configuration and places that `splitrack lab`
writes, and a rack file (lab.toml) that names the coordinator. Stopped again by stop()."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness.rack.lab_client import LabClient, LabError
from harness.rack.lab_export import apply_places, exporter_yaml
from harness.rack.rackfile import load_rack
from harness.rack.virtual_rack import rack_down, rack_up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


class LabRig:
    def __init__(self, folder: Path, boards: int, tags_rack: str = "virtual"):
        self.folder = Path(folder)
        self.procs = []
        self.address = f"127.0.0.1:{free_port()}"
        coord_dir = self.folder / "coordinator"  # the coordinator keeps places.yaml in its working folder
        coord_dir.mkdir(parents=True, exist_ok=True)
        self.rack_file = self.folder / "boards.toml"
        self.rack = None
        try:
            self.coordinator = _spawn([sys.executable, "-m", "labgrid.remote.coordinator", "--listen", self.address],
                                      coord_dir, self.folder / "coordinator.log")
            self.procs.append(self.coordinator)
            self.rack = rack_up(boards, self.rack_file, state=self.folder / "rack-state", progress=lambda s: None)
            text, _ = exporter_yaml(self.rack)
            (self.folder / "exporter.yaml").write_text(text)
            self.client = self._connect()
            self.exporter = _spawn([sys.executable, "-m", "labgrid.remote.exporter", "-c", self.address,
                                    "--name", "rackhost", str(self.folder / "exporter.yaml")],
                                   self.folder, self.folder / "exporter.log")
            self.procs.append(self.exporter)
            deadline = time.monotonic() + 60
            while len(self.client.resources().get("rackhost", {})) < boards:
                if time.monotonic() > deadline or self.exporter.poll() is not None:
                    raise RuntimeError(f"exporter did not publish {boards} groups: "
                                       f"{(self.folder / 'exporter.log').read_text()[-2000:]}")
                time.sleep(0.2)
            apply_places(self.client, self.rack, progress=None)
            b = self.rack.boards[0]
            self.lab_file = self.folder / "lab.toml"
            self.lab_file.write_text(
                f'[rack]\nname = "shared"\ncoordinator = "{self.address}"\ntags = {{ rack = "{tags_rack}" }}\n\n'
                f'[defaults]\nkey = "{b.key}"\nknown_hosts = "{b.known_hosts}"\n')
            self.lab = load_rack(self.lab_file)
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> LabClient:
        deadline = time.monotonic() + 60
        while True:
            try:
                return LabClient(self.address, timeout=10)
            except LabError:
                if time.monotonic() > deadline or self.coordinator.poll() is not None:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        for p in reversed(self.procs):
            _stop(p)
        if self.rack is not None:
            rack_down(self.rack_file)
