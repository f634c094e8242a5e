#!/usr/bin/env bash
# System packages splitrack's tests use, installed when missing (as root; CI machines are root).
# g++: hls4ml emulation. Others are added by the features that need them.
set -euo pipefail
need=()
command -v g++ >/dev/null || need+=(g++)
# cc: the fast model's kernel of virtual boards (harness/agent/fast_kernel.py)
command -v cc >/dev/null || need+=(gcc)
# chromium (+ driver): the dashboard test renders the page headless and checks its console
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# iproute2: network-namespace racks and the tbf ground-truth test of the per-hop measurement
command -v tc >/dev/null || need+=(iproute2)
# openssh-server: the test that deploys to a stock OpenSSH sshd configured as a board (sim_tests/rack/test_deploy_openssh.py)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
# iverilog: Icarus, the second simulator of the RTL cosimulation; ccache: Verilator builds share the compiled
# Verilator runtime and cocotb main between designs (harness/cosim/sim.py)
command -v iverilog >/dev/null || need+=(iverilog)
command -v ccache >/dev/null || need+=(ccache)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing system packages: ${need[*]} (install them with apt-get as root)" >&2; exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
