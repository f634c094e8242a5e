"""Bad input to `splitrack split` / `verify`: one line saying what to do, exit status 2, no traceback."""
import pytest

from harness.cli.commands import main
from splitting.reference_models import reference_model


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "cnn.keras"
    reference_model("cnn").save(path)
    return str(path)


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [l for l in err if l.startswith("splitrack")]


@pytest.mark.parametrize("args,expect", [
    (["--at", "conv9"], "no layer named 'conv9'"),
    (["--neurons", "pool:2"], "'pool' is MaxPooling2D: split one of those"),
    (["--neurons", "conv1:17"], "it has 16 filters; use k <= 16"),
    (["--inputs", "conv1:2"], "it has 1 input channels; use k <= 1"),
    (["--inputs", "fc1"], "write LAYER:K"),
])
def test_split_bad_input(capsys, tmp_path, cnn_file, args, expect):
    code, lines = _run(capsys, ["split", cnn_file, *args, "-o", str(tmp_path / "p")])
    assert code == 2
    assert len(lines) == 1 and expect in lines[0], lines


def test_model_file_that_does_not_load(capsys, tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip")
    code, lines = _run(capsys, ["split", str(bad), "--at", "x", "-o", str(tmp_path / "p")])
    assert code == 2 and len(lines) == 1 and "cannot load" in lines[0] and "save it with Keras 3" in lines[0]
    code, lines = _run(capsys, ["split", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "p")])
    assert code == 2 and "not found" in lines[0]


def test_verify_bad_folder(capsys, tmp_path):
    code, lines = _run(capsys, ["verify", str(tmp_path)])
    assert code == 2 and "plan.json not found" in lines[0]
    (tmp_path / "plan.json").write_text("{not json")
    code, lines = _run(capsys, ["verify", str(tmp_path)])
    assert code == 2 and "not valid JSON" in lines[0]


def test_build_without_vivado_says_so(capsys, tmp_path, cnn_file, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["split", cnn_file, "--at", "pool", "-o", str(tmp_path / "p")]) == 0
    code, lines = _run(capsys, ["build", str(tmp_path / "p")])
    assert code == 2 and "bitstreams need Vivado" in lines[0]
