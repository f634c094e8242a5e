"""hls4ml emulation of the chained partitions against the emulation of the whole model (bit for bit), on the
FC reference model split all three ways; accuracy on digits; the compiled projects are cached."""
import json


from harness.cli.commands import main
from splitting import hls
from splitting.plan import Plan
from splitting.reference_models import reference_model
from splitting.split import split_model, write_plan
from splitting.verify import verify_plan


def test_split_emulation_is_bit_exact_and_keeps_accuracy(fc_plan):
    kinds = [s.kind for s in fc_plan.stages]
    assert kinds == ["layers", "neuron", "input", "join"]
    v = verify_plan(fc_plan, data="digits", n=450, log=lambda *a: None)
    assert v.float_ok and v.float_rel_err <= 1e-5
    assert v.hls_chain_max_abs_err == 0.0 and v.hls_bit_exact
    assert abs(v.accuracy_split_hls - v.accuracy_keras) <= 0.01  # within 1 point of Keras
    assert v.accuracy_keras > 0.9
    # the emulation is not trivially equal to Keras: it is quantised
    assert v.hls_vs_keras_max_abs_err > 0
    # the FC logits reach about -35 on digits, past ap_fixed<16,6>'s +-32: verify must say where
    flagged = [(p["partition"], p["peak_layer"]) for p in v.per_partition if p["overflow"]]
    assert flagged == [("s3", "fc3_join")]  # fc3 is input-split: the full sum is in the join
    from splitting.verify import render
    # said once, by the layer check that found it (layer, kind, the type's range), for the partition
    assert "overflow: partition s3: layer fc3_join (Dense): its sum reaches" in render(v)
    s3 = next(c for c in v.layer_checks if c["scope"] == "partition s3")
    assert s3["overflow"][0] == "fc3_join" and s3["within"] is None  # an overflow is never called quantisation


def test_second_verify_does_not_recompile(fc_plan, monkeypatch, capsys):
    verify_plan(fc_plan, data="random", n=8, log=lambda *a: None)  # everything compiled (cached) by now

    def no_convert(*a, **k):
        raise AssertionError("hls4ml conversion ran again for an unchanged plan")

    monkeypatch.setattr(hls, "_convert", no_convert)
    monkeypatch.setattr(hls, "_loaded", {})  # also reload libraries from the cache folder
    assert main(["verify", str(fc_plan.root), "--json", "-n", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("float_max_abs_err", "hls_chain_max_abs_err", "accuracy_keras", "accuracy_split_hls",
                "partitions", "stages"):
        assert key in out
    assert out["partitions"] == len(fc_plan.partitions) and out["stages"] == 4


def test_verify_fails_when_the_chain_is_wrong(fc_plan, tmp_path, capsys):
    # corrupt one partition's weights consistently (plan hash and weight hash updated): verify must catch it
    import keras
    import shutil
    from splitting.graph import weights_sha256

    bad = tmp_path / "bad"
    shutil.copytree(fc_plan.root, bad)
    plan = Plan.load(bad)
    p = plan.partition("s2_0")
    m = keras.models.load_model(bad / p.model_file)
    w = m.layers[-1].get_weights()
    w[0][0, 0] += 0.5
    m.layers[-1].set_weights(w)
    m.save(bad / p.model_file)
    p.weights_sha256 = weights_sha256(m)
    plan.save(bad)
    assert main(["verify", str(bad), "-n", "64", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["float_ok"] and not out["hls_ok"]


def test_cache_key_is_stable_across_splits(tmp_path):
    # the same split written twice (fresh Keras objects, so fresh shared_object_ids in config.json) must
    # reuse the compiled projects: the key depends on architecture, weights and config only
    keys = []
    for run in ("a", "b"):
        plan, models = split_model(reference_model("fc"), neurons={"fc2": 2})
        write_plan(plan, models, tmp_path / run)
        plan = Plan.load(tmp_path / run)
        keys.append([hls.cache_key(plan.path(p.model_file), p.weights_sha256, p.hls, plan.hls_defaults)
                     for p in plan.ordered_partitions()])
    assert keys[0] == keys[1] and len(set(keys[0])) == len(keys[0])


def test_no_hls_is_reported_as_skipped_not_as_ok():
    """verify --no-hls runs the float composition only: the hls row says it was skipped and the verdict says
    what it covers, never 'ok' for a check that did not run."""
    from splitting.verify import Verification, render

    v = Verification(plan="p", plan_hash="h", data="random", samples=8, partitions=2, stages=2,
                     float_max_abs_err=0.0, float_rel_err=0.0, hls_chain_max_abs_err=0.0, hls_step=2 ** -10,
                     hls_bit_exact=False, hls_vs_keras_max_abs_err=0.0, accuracy_keras=None, accuracy_split_hls=None,
                     accuracy_whole_hls=None, float_ok=True, hls_ok=True, hls_checked=False)
    text = render(v)
    row = next(line for line in text.splitlines() if line.startswith("hls chain vs whole-model hls"))
    assert "skipped (--no-hls)" in row and " ok" not in row
    assert text.splitlines()[-1] == "plan h: PASS (float composition only: the hls4ml chain was not checked)"


def test_a_bit_exact_split_that_loses_the_models_accuracy_fails(tmp_path):
    """The reference CNN at ap_fixed<8,3> (what a refused `plan` suggests trying): conv2's sums reach ~8.9,
    beyond the type's +-4, hls4ml wraps them, and the model falls from ~99 % to chance on digits. The split
    is bit exact to the whole model's emulation, and verify used to PASS it; it fails now, saying the split is
    exact and the precisions are too narrow. A drop within --max-accuracy-drop passes."""
    from splitting.verify import render

    plan, models = split_model(reference_model("cnn"), at=["conv2"], precision="ap_fixed<8,3>")
    write_plan(plan, models, tmp_path / "p8")
    plan = Plan.load(tmp_path / "p8")
    v = verify_plan(plan, data="digits", n=450, log=lambda *a: None)
    assert v.hls_bit_exact and v.accuracy_keras > 0.9 and v.accuracy_split_hls < 0.5
    assert v.accuracy_ok is False and not v.ok
    assert "the split is exact, the precisions are too narrow" in v.cause
    text = render(v)
    assert text.endswith("FAIL") and "split >= Keras - 1 pt (450 samples)" in text
    lenient = verify_plan(plan, data="digits", n=450, log=lambda *a: None, max_accuracy_drop=1.0)
    assert lenient.accuracy_ok is True and lenient.ok is (lenient.chain_within is not False
                                                         and lenient.whole_within is not False)
    v = verify_plan(plan, data="random", n=16, log=lambda *a: None)  # no labels: not judged
    assert v.accuracy_ok is None and "no labels" in render(v)
