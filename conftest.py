"""Repository-level pytest configuration: keep TensorFlow quiet and single-threaded enough for 2 cores."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
