"""TensorFlow and Keras start-up noise, silenced (the CLI's `-v` keeps it).

TensorFlow 2.21 writes its C++ start-up lines (oneDNN, "Could not find cuda drivers", CPU features) through
absl before any Python logging is configured, once for each of the two shared libraries it loads, so
`TF_CPP_MIN_LOG_LEVEL` does not reach them. They are written to file descriptor 2 while `import tensorflow`
runs; `quiet()` installs an import hook that points descriptor 2 at a temporary file for exactly that import
(the file is replayed on stderr when the import fails, so a broken install still explains itself).

Keras 3 warns "The structure of `inputs` doesn't match the expected structure" whenever a one-input
functional model is called with a list; splitrack's partitions are such models: the warning says nothing
to a user and is filtered.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
import warnings

KERAS_NOISE = r"The structure of `inputs` doesn't match the expected structure"


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` through the ordinary finders and runs its import with descriptor 2 redirected."""

    def find_spec(self, name, path, target=None):
        # stays in place until the import has run: a library may ask importlib.util.find_spec("tensorflow")
        # (without importing it) first, and that spec is thrown away
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        inner = spec.loader.exec_module

        def exec_module(module):
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # the import runs now: later imports are plain
            sys.stderr.flush()
            saved = os.dup(2)
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    inner(module)
                except BaseException:
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    sys.stderr.write(tmp.read().decode(errors="replace"))
                    raise
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)

        spec.loader.exec_module = exec_module
        return spec


def quiet() -> None:
    """Silence TensorFlow's and Keras' start-up noise in this process and in the Python processes it starts
    (through the environment). Call before anything imports TensorFlow; harmless after."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # keras' predict on partitions of different shapes triggers tf.function "retracing" warnings: noise here
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=KERAS_NOISE)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
