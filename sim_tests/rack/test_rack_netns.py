"""Network-namespace racks: every board its own namespace, address and veth link; links rate-limited by tbf."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from harness.rack.deploy import deploy
from harness.measure.stream import Pipeline
from harness.rack.virtual_rack import rack_down, rack_up

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"),
                                reason="network-namespace racks need root and iproute2")


def _netns():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_netns_rack_deploys_streams_and_cleans_up(tmp_path):
    from splitting.chain import emulation_runner, run_chain
    from splitting.plan import Plan
    from splitting.reference_models import digits_data, model_inputs, reference_model
    from splitting.split import split_model, write_plan

    plan, models = split_model(reference_model("fc"), at=["fc1", "fc2"])
    write_plan(plan, models, tmp_path / "plan")
    plan = Plan.load(tmp_path / "plan")

    rack = rack_up(3, tmp_path / "rack.toml", state=tmp_path / "state", netns=True, rate="100mbit",
                   progress=lambda s: None)
    try:
        hosts = [b.host for b in rack.boards]
        assert len(set(hosts)) == 3 and all(h.startswith("10.77.") for h in hosts)
        assert {b.port for b in rack.boards} == {22} and {b.data_port for b in rack.boards} == {7700}
        k = hosts[0].split(".")[2]
        for i in range(3):  # the kernel shapes both ends of every board's link
            inside = subprocess.run(["ip", "netns", "exec", f"sr{k}b{i}", "tc", "qdisc", "show", "dev", "eth0"],
                                    capture_output=True, text=True).stdout
            outside = subprocess.run(["tc", "qdisc", "show", "dev", f"sr{k}h{i}"], capture_output=True, text=True).stdout
            assert "tbf" in inside and "rate 100Mbit" in inside, inside
            assert "tbf" in outside and "rate 100Mbit" in outside, outside

        dep = deploy(plan, rack)
        x = model_inputs("fc", digits_data()[2][:30]).astype(np.float32)
        with Pipeline(dep.wiring) as pipe:
            out = pipe.stream(x, timeout=10).outputs().reshape(len(x), -1)
        assert np.array_equal(out, run_chain(plan, x, emulation_runner(plan)).reshape(len(x), -1))
    finally:
        rack_down(tmp_path / "rack.toml")
    left = _netns()
    assert not any(f"sr{k}b{i}" in left.split() for i in range(3)), left
    assert subprocess.run(["ip", "link", "show", f"srbr{k}"], capture_output=True).returncode != 0


def test_two_netns_racks_starting_together_get_their_own_links(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def up(i):
        return rack_up(1, tmp_path / f"r{i}.toml", state=tmp_path / f"s{i}", netns=True, progress=lambda s: None)

    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(up, i) for i in range(2)]
        racks = []
        errors = []
        for f in futs:
            try:
                racks.append(f.result())
            except Exception as e:  # still stop the other one
                errors.append(e)
    try:
        assert not errors, errors
        subnets = {r.boards[0].host.rsplit(".", 1)[0] for r in racks}
        assert len(subnets) == 2
    finally:
        for i in range(2):
            if (tmp_path / f"r{i}.toml").exists():
                rack_down(tmp_path / f"r{i}.toml")
