"""The evaluations on a tiny model trained here (a manifest this test writes -> dataset -> 40
steps): zero-shot with a template ensemble, linear probe, the Winoground-form paired test,
missing-modality robustness, the periodic hook and the CLI glue."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from omni.data import pipeline
from omni.eval.commands import cli_linear_probe, cli_paired, cli_retrieval, cli_robustness
from omni.eval.embedding import ListSource, embed_records
from omni.eval.paired import matching_similarity, winoground_scores
from omni.eval.periodic import periodic_evaluations
from omni.eval.probe import PROBE_CS
from omni.eval.retrieval import retrieval, retrieval_during_training
from omni.eval.robustness import fused_embed_records, missing_modality
from omni.eval.zeroshot import class_embeddings, zeroshot
from omni.run.load import load_run
from tests.conftest import small_config
from tests.test_train import COLORS, write_manifest

TEMPLATES = ["a {} square on black", "a {} bar on black", "a photo of {}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from omni.data.manifest import build
    from omni.train import train
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    build(write_manifest(root / "files"), data)
    config = small_config(f"--config.data.path={data}", "--config.train.steps=40", "--config.train.log_every=20",
                          "--config.train.eval_every=0", "--config.train.checkpoint_every=40",
                          "--config.train.warmup_steps=5",
                          # Contrastive only: the masked objectives' fused pass would double the
                          # compile time, and the embeddings evaluated here come from the contrastive one.
                          "--config.loss.mlm.weight=0", "--config.loss.mim.weight=0", "--config.loss.mmm.weight=0",
                          # matching on, for re-ranking (omni.eval.rerank)
                          "--config.loss.itm.weight=0.5")
    workdir = root / "run"
    train(config, workdir)
    return workdir, data, load_run(workdir)


def _split(data, name):
    from omni.data.records import open_split
    return open_split(data, name)


def test_template_ensemble_on_the_model(run):
    _, data, (config, setup, params, assets, _) = run
    classes = sorted(COLORS)
    each = [class_embeddings(setup, params, config, assets, classes, t) for t in TEMPLATES]
    together = class_embeddings(setup, params, config, assets, classes, TEMPLATES)
    mean = np.mean(each, axis=0)
    np.testing.assert_allclose(together, mean / np.linalg.norm(mean, axis=-1, keepdims=True), atol=1e-6)

    source = _split(data, "test")
    one = zeroshot(setup, params, source, config, assets, "image", TEMPLATES[0])
    assert zeroshot(setup, params, source, config, assets, "image", [TEMPLATES[0]]) == one
    assert set(one) == {"accuracy", "n", "classes"} and one["classes"] == 4
    ensembled = zeroshot(setup, params, source, config, assets, "image", TEMPLATES)
    assert ensembled["n"] == one["n"]
    assert ensembled["accuracy"] > 0.25, ensembled  # 4 colours: chance is 1/4


def test_cli_retrieval_on_the_model(run):
    workdir, data, loaded = run
    config, setup, params, assets, _ = loaded
    result = cli_retrieval(workdir, data, "test", "image", "text", run=loaded)
    with jax.set_mesh(setup.mesh):
        assert result == retrieval(setup, params, _split(data, "test"), config, assets, "image", "text")
    assert result["n"] >= 8 and set(result) == {"R@1", "R@5", "R@10", "R@1_chance", "R@5_chance", "R@10_chance", "n"}
    saved = json.loads((workdir / "eval" / "retrieval-test-image-text.json").read_text())
    assert saved == {"step": 40, **result}


def test_rerank_reorders_only_the_top_k(run):
    workdir, data, loaded = run
    plain = cli_retrieval(workdir, data, "test", "image", "text", run=loaded)
    result = cli_retrieval(workdir, data, "test", "image", "text", run=loaded, rerank=5)
    assert result["n"] == plain["n"] >= 8 and result["rerank_k"] == 5
    assert all(result[f"R@{k}"] == plain[f"R@{k}"] for k in (1, 5, 10))
    # Re-ordering inside the top 5 cannot change which targets are in the top 5 or top 10.
    for score in ("rerank", "matching"):  # ALBEF's sum, and the matching logit alone
        assert result[f"R@5_{score}"] == result["R@5"] and result[f"R@10_{score}"] == result["R@10"]
        assert 0.0 <= result[f"R@1_{score}"] <= result["R@5"]
    assert (workdir / "eval" / "retrieval-test-image-text-rerank5.json").exists()


def test_linear_probe_on_the_model(run):
    workdir, data, loaded = run
    result = cli_linear_probe(workdir, data, "image", run=loaded)
    assert result["classes"] == 4 and result["n"] >= 8 and result["C"] in PROBE_CS
    # The colour is a linear function of the pixels: a probe on even a 40-step model beats chance.
    assert result["accuracy"] > 0.25, result
    saved = json.loads((workdir / "eval" / "linear_probe-test-image.json").read_text())
    assert saved == {"step": 40, **result}


def test_paired_compositional_on_the_model(run, tmp_path):
    workdir, _, loaded = run
    config, setup, params, assets, _ = loaded
    (tmp_path / "img").mkdir()
    lines = []
    for g, (a, b) in enumerate([("red", "blue"), ("green", "yellow"), ("blue", "green")]):
        for i, (fg, bg) in enumerate([(a, b), (b, a)]):
            pixels = np.zeros((24, 24, 3), np.uint8) + np.array(COLORS[bg], np.uint8)
            pixels[6:18, 6:18] = COLORS[fg]
            Image.fromarray(pixels).save(tmp_path / "img" / f"{g}-{i}.png")
        lines.append({"id": f"g{g}", "caption_0": f"a {a} square on {b}", "caption_1": f"a {b} square on {a}",
                      "image_0": f"img/{g}-0.png", "image_1": f"img/{g}-1.png"})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = cli_paired(workdir, pairs, run=loaded)
    assert result["n"] == 3 and result["modality"] == "image"
    # The scores are those of the similarity matrices built by hand from the unimodal embeddings.
    captions = [{"id": f"{k}", "text": line[f"caption_{i}"]} for k, line in enumerate(lines) for i in (0, 1)]
    images = [{"id": f"{k}", "image": (pairs.parent / line[f"image_{i}"]).read_bytes()}
              for k, line in enumerate(lines) for i in (0, 1)]
    zc, _ = embed_records(setup, params, ListSource(captions), config, assets, "text")
    zi, _ = embed_records(setup, params, ListSource(images), config, assets, "image")
    similarity = np.einsum("gie,gje->gij", zc.reshape(3, 2, -1), zi.reshape(3, 2, -1))
    expected = winoground_scores(similarity)
    for key in ("text_score", "image_score", "group_score"):
        assert result[key] == expected[key]
    assert (workdir / "eval" / "paired-pairs.json").exists()
    # The matching head's scores, against logits of (caption_i, image_j) records built by hand.
    both = [{"id": f"{g}-{i}-{j}", "text": lines[g][f"caption_{i}"],
             "image": (pairs.parent / lines[g][f"image_{j}"]).read_bytes()}
            for g in range(3) for i in (0, 1) for j in (0, 1)]
    batch, count, _ = next(pipeline.eval_batches(ListSource(both), config, assets, 16))
    logits = setup.match_fn("image", "text")(params, batch)[:count].reshape(3, 2, 2)
    captions = [{"id": f"g{g}/caption_{i}", "text": lines[g][f"caption_{i}"]} for g in range(3) for i in (0, 1)]
    images = [{"id": f"g{g}/image_{i}", "image": (pairs.parent / lines[g][f"image_{i}"]).read_bytes()}
              for g in range(3) for i in (0, 1)]
    got = matching_similarity(setup, params, config, assets, captions, images, "image", 3)
    assert np.max(np.abs(got - logits)) <= 1e-5, (got, logits)
    matched = winoground_scores(got)
    assert all(result["matching"][k] == matched[k] for k in ("text_score", "image_score", "group_score"))


def test_missing_modality_on_the_model(run):
    workdir, data, loaded = run
    config, setup, params, assets, _ = loaded
    source = _split(data, "test")
    # With one modality left, the joint (early-fusion) pass equals that modality's unimodal embedding.
    conditions = [("image",), ("text",), ("text", "image")]
    fused, records = fused_embed_records(setup, params, source, config, assets, ["text", "image"],
                                                  conditions, "early")
    assert len(records) >= 8
    for name in ("image", "text"):
        z, kept = embed_records(setup, params, ListSource(records), config, assets, name)
        assert [r["id"] for r in kept] == [r["id"] for r in records]
        np.testing.assert_allclose(fused[(name,)], z, atol=1e-5)
    both = fused[("text", "image")]
    assert np.abs(both - fused[("image",)]).max() > 1e-3  # the other modality is really seen

    early = cli_robustness(workdir, data, template=TEMPLATES, run=loaded)
    late = missing_modality(setup, params, source, config, assets, None, TEMPLATES, "late")
    assert set(early["accuracy"]) == {"all", "without_text", "without_image"} and early["n"] == len(records)
    # Dropping a modality leaves the same single-modality input under either fusion.
    for key in ("without_text", "without_image"):
        assert early["accuracy"][key] == late["accuracy"][key]
    image_only = zeroshot(setup, params, ListSource(records), config, assets, "image", TEMPLATES)
    assert early["accuracy"]["without_text"] == image_only["accuracy"]
    assert early["drop"]["text"] == pytest.approx(early["accuracy"]["all"] - early["accuracy"]["without_text"])
    assert (workdir / "eval" / "robustness-test-early.json").exists()


def test_periodic_evaluations(run):
    _, data, (config, setup, params, assets, _) = run
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.eval.tasks = "retrieval,zeroshot,linear_probe,robustness"
        config.eval.templates = "|".join(TEMPLATES)
    with jax.set_mesh(setup.mesh):
        metrics = periodic_evaluations(setup, params, config, assets, data)
        before = retrieval_during_training(setup, params, _split(data, "test"), config, assets)
    assert {k: v for k, v in metrics.items() if k.startswith("eval/retrieval/")} == before
    for key in ("eval/zeroshot/image/accuracy", "eval/linear_probe/image/accuracy",
                "eval/linear_probe/image/val_accuracy", "eval/robustness/accuracy/all",
                "eval/robustness/accuracy/without_text", "eval/robustness/drop/image"):
        assert key in metrics, sorted(metrics)
    assert all(isinstance(v, float) for v in metrics.values())


def test_exported_matching_program_equals_the_framework(run, tmp_path, capsys):
    from omni.cli import main
    from omni.export.bundle import export_bundle
    from omni.export.match import match_scores
    workdir, _, (config, setup, params, assets, _) = run
    bundle = tmp_path / "bundle"
    export_bundle(workdir, bundle, platforms=("cpu",))
    captions = [f"a {fg} square on {bg}" for fg, bg in (("red", "blue"), ("green", "yellow"), ("blue", "red"))]
    images = []
    for i, (fg, bg) in enumerate((("red", "blue"), ("green", "yellow"), ("red", "blue"))):
        pixels = np.zeros((24, 24, 3), np.uint8) + np.array(COLORS[bg], np.uint8)
        pixels[6:18, 6:18] = COLORS[fg]
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    exported = match_scores(bundle, [(("image", im), ("text", c)) for im, c in zip(images, captions)])
    records = [{"id": str(i), "text": c, "image": open(im, "rb").read()} for i, (c, im) in enumerate(zip(captions, images))]
    batch, count, _ = next(pipeline.eval_batches(ListSource(records), config, assets, 8))
    framework = setup.match_fn("image", "text")(params, batch)[:count]
    assert np.max(np.abs(exported - framework)) <= 1e-5, (exported, framework)

    assert main(["match", str(bundle), "--a-modality", "text", captions[0], "--b-modality", "image", images[0]]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert abs(printed["logit"] - float(framework[0])) <= 1e-5 and 0 < printed["probability"] < 1
