"""Agents running hls4ml emulation libraries (what a virtual board runs) give the plan's chained emulation
bit for bit: the FC reference model split all three ways (cut, neuron split, input split + join), the same
plan the verify tests compile, so the compiled partitions come from the shared cache."""
import json
from pathlib import Path

import numpy as np

from harness.cli.commands import main
from harness.rack.local_rack import LocalRack
from harness.measure.stream import Pipeline
from splitting.chain import emulation_runner, run_chain
from splitting.reference_models import digits_data


def test_agents_equal_the_chained_emulation_bit_for_bit(fc_plan, tmp_path):
    assert [s.kind for s in fc_plan.stages] == ["layers", "neuron", "input", "join"]
    _, _, x, y = digits_data()
    x = x[:150].reshape(150, 64)
    ref = run_chain(fc_plan, x, emulation_runner(fc_plan))
    with LocalRack(tmp_path) as rack:
        wiring = rack.start(fc_plan, "emulation", in_flight=4)
        with Pipeline(wiring) as pipe:
            res = pipe.stream(x, in_flight=6, timeout=20)
    out = res.outputs()
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)  # exact: same library, same fixed-point inputs, raw ints on the wire
    assert np.mean(np.argmax(out, axis=1) == y[:150]) > 0.9
    # and not trivially: the emulation's outputs are quantised, not Keras floats
    step = fc_plan.output_links[0].step
    assert np.all(np.abs(out / step - np.round(out / step)) == 0)


def test_run_command_local(fc_plan, tmp_path, capsys):
    assert main(["run", str(fc_plan.root), "--local", "--frames", "60", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "bit for bit: 60/60" in text
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["emulation_mismatches"] == 0 and summary["frames"] == 60
    assert set(summary["partitions"]) == set(fc_plan.partitions)
    assert (tmp_path / "run.png").stat().st_size > 10_000


def test_run_command_rejects_data_of_the_wrong_shape(fc_plan, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 10), np.float32))
    assert main(["run", str(fc_plan.root), "--local", "--data", str(tmp_path / "x.npy")]) == 2
    assert "the plan takes (64,)" in capsys.readouterr().err


# A stand-in for the part of the PYNQ API the agent's overlay backend uses (Overlay, allocate, AXI DMA
# channels), with the partition's emulation library as the "logic". It checks the agent's real-board code
# path: DMA buffers allocated once, values or raw ap_fixed words in and out, nothing else.
FAKE_PYNQ = '''
import json, os, types
import numpy as np
from splitting import contract, emulation  # at their package paths in the agent's folder

def allocate(shape, dtype):
    with open("allocations.log", "a") as f:
        f.write("%s %s\\n" % (shape, np.dtype(dtype).name))
    return np.zeros(shape, dtype)

class _Channel:
    def __init__(self, dma, send):
        self.dma, self.send = dma, send
    def transfer(self, buf):
        if self.send:
            self.dma.inbuf = buf
        else:
            self.dma.outbuf = buf
    def wait(self):
        if not self.send:
            self.dma.run()

class _DMA:
    def __init__(self, spec):
        self.lib = emulation.EmulationLib(spec["library"], spec["project"], spec["n_in"], spec["n_out"])
        self.t_in, self.t_out = contract.FixedType.parse(spec["in_type"]), contract.FixedType.parse(spec["out_type"])
        self.sendchannel, self.recvchannel = _Channel(self, True), _Channel(self, False)
    def run(self):
        x = self.inbuf
        if x.dtype.kind == "i":  # raw words on the stream: the logic sees them as ap_fixed
            x = self.t_in.from_raw(x.astype(np.int64))
        y = self.lib.run(np.asarray(x, np.float64))
        self.outbuf[:] = self.t_out.to_raw(y) if self.outbuf.dtype.kind == "i" else y

class Overlay:
    def __init__(self, bitfile):
        self.hier_0 = types.SimpleNamespace(axi_dma_0=_DMA(json.load(open(bitfile))))
'''


def test_overlay_backend_through_a_stand_in_pynq(fc_plan, tmp_path):
    from splitting import hls
    from harness.rack.wiring import overlay_backend

    (tmp_path / "pynq").mkdir()
    (tmp_path / "pynq" / "__init__.py").write_text(FAKE_PYNQ)
    backends = {}
    for i, name in enumerate(fc_plan.partitions):
        lib = hls.emulation(fc_plan, name)
        bit = tmp_path / f"{name}.bit"
        ins, outs = fc_plan.inputs_of(name), fc_plan.outputs_of(name)
        bit.write_text(json.dumps({"library": str(Path(lib.library).resolve()), "project": lib.project,
                                   "n_in": lib.n_in, "n_out": lib.n_out, "in_type": ins[0].dtype,
                                   "out_type": outs[0].dtype}))
        dtype = "float32" if i % 2 else "int16"  # both kinds of accelerator wrapper interface
        backends[name] = overlay_backend(fc_plan, name, str(bit), str(bit.with_suffix(".hwh")), dtype, dtype)
    _, _, x, _ = digits_data()
    x = x[:40].reshape(40, 64)
    ref = run_chain(fc_plan, x, emulation_runner(fc_plan))
    with LocalRack(tmp_path / "rack", env={"PYTHONPATH": str(tmp_path)}) as rack:
        wiring = rack.start(fc_plan, backends)
        with Pipeline(wiring) as pipe:
            out = pipe.stream(x, timeout=20).outputs()
        allocations = {n: (a.folder / "allocations.log").read_text().splitlines() for n, a in rack.agents.items()}
    np.testing.assert_array_equal(out, ref)
    for name, lines in allocations.items():
        assert len(lines) == 2, f"{name}: DMA buffers must be allocated once, not per frame: {lines}"
