"""Fixtures shared by several test files."""
import pytest

from splitting.plan import Plan
from splitting.reference_models import reference_model
from splitting.split import split_model, write_plan


@pytest.fixture(scope="session")
def fc_plan(tmp_path_factory):
    """The FC reference model split all three ways: cut after fc1, fc2 neuron-split, fc3 input-split + join.
    Tests that compile it share the hls4ml cache."""
    folder = tmp_path_factory.mktemp("fc_plan")
    plan, models = split_model(reference_model("fc"), at=["fc1"], neurons={"fc2": 2}, inputs={"fc3": 2})
    write_plan(plan, models, folder)
    return Plan.load(folder)


def _skip_model():
    import keras
    import numpy as np

    L = keras.layers
    keras.utils.set_random_seed(7)
    inp = keras.Input((4, 4, 2), name="x")
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="a")(inp)
    b = L.Conv2D(4, 3, padding="same", name="b")(a)
    b = L.BatchNormalization(name="b_bn")(b)
    b = L.ReLU(name="b_relu")(b)
    c = L.DepthwiseConv2D(3, padding="same", name="c")(b)
    c = L.ReLU(name="c_relu")(c)
    add = L.Add(name="add")([a, c])
    z = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(add)
    p = L.AveragePooling2D(2, name="pool")(z)
    cat = L.Concatenate(name="cat")([L.GlobalAveragePooling2D(name="gap")(p), L.Flatten(name="fl")(inp)])
    out = L.Dense(3, name="out")(cat)
    model = keras.Model(inp, out, name="skippy")
    bn = model.get_layer("b_bn")
    bn.set_weights([np.full(4, 1.5, np.float32), np.full(4, 0.1, np.float32), np.full(4, 0.2, np.float32),
                    np.full(4, 2.0, np.float32)])
    return model


@pytest.fixture(scope="session")
def skip_plan(tmp_path_factory):
    """A conv model cut inside a residual branch (two tensors cross) and before a padding, its input read again
    by the last stage (a skip link host -> s2): partitions with several inputs and outputs (test_graphs,
    test_cold_verify)."""
    model = _skip_model()
    # a cut inside the residual branch (two tensors cross) and one before the padding; the model input
    # crosses both (host -> s2, a skip link)
    plan, models = split_model(model, at=["b_relu", "add"])
    folder = tmp_path_factory.mktemp("skip") / "plan"
    write_plan(plan, models, folder)
    return Plan.load(folder)


# --- timing bounds that hold on a busy machine -----------------------------------------------------------
# A test about a timeout asserts what the code controls: the timeout does not fire early (elapsed >= the
# timeout, where the test's clock starts before the code's) and it does fire, within what the code promises
# plus an allowance for the wake-ups on the way, each costing what a wake-up costs on this machine *while the
# test runs*. Never a fixed millisecond budget: on a 2-core machine with a compiler and two CPU burners beside
# the suite, one wake-up costs milliseconds where it costs 50 us on an idle machine. Speed itself is never
# asserted in a test (benchmarks/ measure it, as ratios side by side in one run).
import threading  # noqa: E402
import time  # noqa: E402


class SchedulingLatency:
    """How late this process wakes up right now: the overshoot of short sleeps (seconds), sampled by a
    background thread for as long as the probe runs, so the figure covers the load present during the test.

    A sleep's overshoot is timer latency + waiting for a CPU + waiting for the GIL: what every hand-off
    between threads or processes in the code under test costs too. Usually from the `sched_latency` fixture.
    """

    SLEEP_S = 0.001   # sampled sleep; short, so a quick test still gets a few hundred samples
    WARMUP = 50       # samples taken before the test starts (a test that ends at once still has a figure)
    # Least cost counted per wake-up: a scheduler tick of a HZ=1000 kernel. On an idle machine a sleep's p99
    # overshoot (50-100 us) understates a hand-off through Python code on both sides; under load the measured
    # p99 (milliseconds to tens of ms) takes over.
    FLOOR_S = 0.001

    def __init__(self):
        self._late = []
        self._stop = threading.Event()
        for _ in range(self.WARMUP):
            self._sample()
        self._thread = threading.Thread(target=self._run, name="sched latency probe", daemon=True)
        self._thread.start()

    def _sample(self):
        t = time.perf_counter()
        time.sleep(self.SLEEP_S)
        self._late.append(max(0.0, time.perf_counter() - t - self.SLEEP_S))

    def _run(self):
        while not self._stop.is_set():
            self._sample()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def percentile(self, q: float) -> float:
        """q-th percentile (0-100) of the wake-up overshoot so far, in seconds."""
        late = sorted(self._late)  # a copy first (sorted copies under the GIL): the probe thread keeps appending
        return late[min(len(late) - 1, int(len(late) * q / 100))]

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def bound(self, promised_s: float, wakeups: int) -> float:
        """Latest time (s) by which something the code promises within `promised_s` of waiting (its timeout,
        a grace period, a watchdog's tick) must be done, when its path through threads and processes takes
        up to `wakeups` wake-ups: promised_s + wakeups x the p99 wake-up latency measured so far (at least
        FLOOR_S). Count the wake-ups of the path generously (every hand-off of every frame, each connect,
        each round trip): an undercount makes the test flaky, an overcount only makes it looser by a few of
        this machine's scheduling latencies."""
        return promised_s + wakeups * max(self.p99, self.FLOOR_S)

    def __repr__(self):
        return (f"SchedulingLatency(p50={self.percentile(50) * 1e6:.0f} us, p99={self.p99 * 1e6:.0f} us, "
                f"max={self.percentile(100) * 1e6:.0f} us, {len(self._late)} samples)")


@pytest.fixture
def sched_latency():
    """A SchedulingLatency probe running for the whole test: `sched_latency.bound(timeout, wakeups)`."""
    probe = SchedulingLatency()
    yield probe
    probe.stop()


@pytest.fixture(scope="session")
def field_cases(tmp_path_factory):
    """The field cases of ../shared/cases (issue 10), built once per session with the project's Python.
    The script lives outside the repository; the tests that use it are skipped where it is absent."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / ".." / "shared" / "cases" / "models" / "make_cases.py"
    if not script.is_file():
        pytest.skip("the field cases script (shared/cases/models/make_cases.py) is not on this machine")
    out = tmp_path_factory.mktemp("field_cases")
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=600)
    return out

