"""Measuring a deployed plan: streaming frames, clock sync, per-hop attribution, the CPU reference, what a board's compute figure is."""
