"""Measuring a deployed plan: streaming frames, clock sync, per-hop attribution, the CPU reference, `bench` and `run`."""
