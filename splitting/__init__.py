"""splitrack's splitting library: cut Keras models into partitions for a rack of small FPGAs.

Never imports `harness`. Modules that need TensorFlow import it themselves, so the plan and contract
modules stay usable without it.
"""
