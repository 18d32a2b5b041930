import json

import numpy as np
import pytest

from omni.eval.paired import read_pairs, winoground_scores
from omni.eval.periodic import PeriodicEvaluator, eval_tasks
from omni.eval.probe import PROBE_CS, fit_linear_probe, validation_split
from omni.eval.results import flatten, write_result
from omni.eval.retrieval import chance_recall, recall_at_k
from omni.eval.zeroshot import DEFAULT_TEMPLATE, ensemble, templates_list


def test_chance_recall_equals_the_average_over_every_ranking():
    import itertools
    correct = np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 1, 0, 1], [0, 0, 0, 1, 0]], bool)
    rankings = list(itertools.permutations(range(5)))
    for k in (1, 2, 3):
        brute = np.mean([[correct[q, list(order[:k])].any() for order in rankings] for q in range(4)])
        assert chance_recall(correct, ks=(k,))[f"R@{k}_chance"] == pytest.approx(brute)


def test_recall_on_a_hand_made_matrix():
    similarity = np.array([
        [0.9, 0.1, 0.0, 0.2],   # query 0: correct target 0 ranked 1st
        [0.8, 0.1, 0.7, 0.6],   # query 1: correct target 1 ranked 4th
        [0.1, 0.2, 0.3, 0.9],   # query 2: correct target 2 ranked 2nd
        [0.5, 0.4, 0.3, 0.2],   # query 3: correct target 3 ranked 4th
    ])
    correct = np.eye(4, dtype=bool)
    assert recall_at_k(similarity, correct, ks=(1, 2, 4)) == {"R@1": 0.25, "R@2": 0.5, "R@4": 1.0}


def test_several_correct_targets_per_query():
    similarity = np.array([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    correct = np.array([[True, False, True], [False, True, False]])
    # query 0: best correct is target 2 at rank 2; query 1: target 1 at rank 3.
    assert recall_at_k(similarity, correct, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}


# ------------------------------------------------------------------------------------------------
# Hand-made checks with known answers (no model)
# ------------------------------------------------------------------------------------------------


def test_winoground_scores_on_hand_made_groups():
    # similarity[g, caption i, input j]; caption i describes input i.
    similarity = np.array([
        [[0.9, 0.1], [0.2, 0.8]],   # both right: text, image, group
        [[0.9, 0.8], [0.1, 0.2]],   # caption 0 wins for both inputs: text yes; image: s00>s01 yes, s11>s10 yes
        [[0.5, 0.6], [0.1, 0.9]],   # text: s00>s10 yes, s11>s01 yes; image: s00>s01 no
        [[0.3, 0.7], [0.8, 0.2]],   # everything swapped: nothing
        [[0.5, 0.5], [0.5, 0.5]],   # ties fail
    ])
    # group 1: text needs s00>s10 (0.9>0.1) and s11>s01 (0.2>0.8: no) -> text no; image yes.
    result = winoground_scores(similarity)
    assert result["text_score"] == pytest.approx(2 / 5)     # groups 0, 2
    assert result["image_score"] == pytest.approx(2 / 5)    # groups 0, 1
    assert result["group_score"] == pytest.approx(1 / 5)    # group 0
    assert result["n"] == 5
    assert result["chance"] == {"text_score": 0.25, "image_score": 0.25, "group_score": pytest.approx(1 / 6)}


def test_winoground_chance_levels_with_random_similarities():
    similarity = np.random.default_rng(0).normal(size=(60_000, 2, 2))
    result = winoground_scores(similarity)
    assert result["text_score"] == pytest.approx(0.25, abs=0.01)
    assert result["image_score"] == pytest.approx(0.25, abs=0.01)
    assert result["group_score"] == pytest.approx(1 / 6, abs=0.01)


def test_template_ensemble_is_the_normalised_mean():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 4, 8))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    got = ensemble(z)
    mean = z.mean(axis=1)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=-1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
    # One template: the ensemble is that template's (normalised) embedding.
    np.testing.assert_allclose(ensemble(z[:, :1]), z[:, 0], atol=1e-6)


def test_templates_accept_a_string_or_a_list():
    assert templates_list("a {}") == ["a {}"]
    assert templates_list(["a {}", "the {}"]) == ["a {}", "the {}"]
    assert templates_list(None) == [DEFAULT_TEMPLATE]
    with pytest.raises(ValueError, match="must contain"):
        templates_list(["a {}", "no slot"])
    with pytest.raises(ValueError):
        templates_list([])


def _blobs(n_per_class, centers, rng, spread=0.05):
    x = np.concatenate([c + spread * rng.normal(size=(n, len(c))) for c, n in zip(centers, n_per_class)])
    y = np.concatenate([[f"class{k}"] * n for k, n in enumerate(n_per_class)])
    return x, y


def test_linear_probe_separable_embeddings_reach_100_percent():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16)
    train_x, train_y = _blobs([30, 30, 30, 30], centers, rng)
    test_x, test_y = _blobs([10, 10, 10, 10], centers, rng)
    result = fit_linear_probe(train_x, train_y, test_x, test_y)
    assert result["accuracy"] == 1.0 and result["n"] == 40 and result["classes"] == 4
    assert result["C"] in PROBE_CS
    assert result["n_train"] + result["n_val"] == 120 and result["n_val"] == 24
    # Deterministic: the same split and C again.
    assert fit_linear_probe(train_x, train_y, test_x, test_y) == result


def test_linear_probe_picks_C_on_validation():
    # Separable but imbalanced (3:1): with an overwhelming penalty (C=1e-6) the weights vanish and
    # every example gets the majority class (75% on validation); C=100 separates them (100%).
    rng = np.random.default_rng(0)
    centers = np.array([[1.0, 0.0], [0.0, 1.0]])
    train_x, train_y = _blobs([60, 20], centers, rng)
    test_x, test_y = _blobs([15, 15], centers, rng)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, Cs=(1e-6, 100.0))
    assert result["C"] == 100.0
    assert result["validation"]["100"] == 1.0 and result["validation"]["1e-06"] < 0.9
    assert result["val_accuracy"] == 1.0 and result["accuracy"] == 1.0
    # Forced to the heavy penalty, the probe only finds the majority class: 50% on the balanced test.
    forced = fit_linear_probe(train_x, train_y, test_x, test_y, Cs=(1e-6,))
    assert forced["C"] == 1e-6 and forced["accuracy"] == 0.5
    # Ties on validation go to the strongest regularisation (the smallest C).
    tied = fit_linear_probe(train_x, train_y, test_x, test_y, Cs=(10.0, 100.0, 1000.0))
    assert tied["C"] == 10.0


def test_linear_probe_counts_unseen_test_labels_as_errors():
    rng = np.random.default_rng(0)
    train_x, train_y = _blobs([20, 20], np.eye(2), rng)
    test_x, test_y = _blobs([5, 5, 5], np.eye(3, 2), rng)
    result = fit_linear_probe(train_x, train_y, test_x, test_y)
    assert result["n"] == 15 and result["accuracy"] == pytest.approx(10 / 15)


def test_validation_split_is_deterministic_and_disjoint():
    fit, val = validation_split(50, 0.2, seed=0)
    again_fit, again_val = validation_split(50, 0.2, seed=0)
    assert (fit == again_fit).all() and (val == again_val).all()
    assert len(val) == 10 and not set(fit) & set(val) and set(fit) | set(val) == set(range(50))


def test_read_pairs_format(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"bytes of " + name.encode())
    lines = [{"id": "g1", "caption_0": "a red square on black", "caption_1": "a black square on red",
              "image_0": "img/a.png", "image_1": "img/b.png"},
             {"caption_0": "x y", "caption_1": "y x", "image_0": "img/b.png", "image_1": "img/a.png"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    modality, groups = read_pairs(path)
    assert modality == "image" and len(groups) == 2
    assert groups[0]["input_0"] == b"bytes of a.png" and groups[1]["id"] == "line-2"
    assert groups[1]["caption_1"] == "y x"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**lines[0], "image_1": "img/missing.png"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: image_1 file .*missing.png does not exist"):
        read_pairs(bad)
    bad.write_text(json.dumps({"caption_0": "a", "caption_1": "b", "image_0": "img/a.png"}) + "\n")
    with pytest.raises(ValueError, match="exactly two keys"):
        read_pairs(bad)
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "nowhere.jsonl")


def test_write_result(tmp_path):
    path = write_result(tmp_path / "run", "paired-my pairs", {"group_score": 0.5}, step=7)
    assert path == tmp_path / "run" / "eval" / "paired-my_pairs.json"
    assert json.loads(path.read_text()) == {"step": 7, "group_score": 0.5}


def test_eval_tasks_from_config(tmp_path):
    import ml_collections
    config = ml_collections.ConfigDict({"eval": {"split": "test"}})
    assert eval_tasks(config) == ["retrieval"]
    config.eval.tasks = "retrieval, zeroshot,linear_probe"
    assert eval_tasks(config) == ["retrieval", "zeroshot", "linear_probe"]
    assert PeriodicEvaluator().check(config) == ["retrieval", "zeroshot", "linear_probe"]
    config.eval.tasks = "retrieval,zeroshoot"
    with pytest.raises(ValueError, match="unknown task 'zeroshoot'"):
        eval_tasks(config)
    with pytest.raises(ValueError, match="unknown task 'zeroshoot'"):
        PeriodicEvaluator().check(config)
    config.eval.tasks = "paired"
    with pytest.raises(ValueError, match="eval.pairs"):
        eval_tasks(config)


def test_flatten_keeps_scores_only():
    result = {"accuracy": {"all": 0.5, "without_text": 0.25}, "drop": {"text": 0.25}, "n": 8, "classes": 4,
              "fusion": "early", "chance": {"text_score": 0.25}, "C": 10.0, "val_accuracy": 1.0}
    assert flatten("eval/x", result) == {
        "eval/x/accuracy/all": 0.5, "eval/x/accuracy/without_text": 0.25, "eval/x/drop/text": 0.25,
        "eval/x/val_accuracy": 1.0}


def test_eval_batches_decode_only_the_modalities_asked_for():
    """Evaluating text alone must not decode (or fail on) another modality's field."""
    from omni.config import load_config
    from omni.data import pipeline
    from omni.modalities.text import BPETokenizer
    from tests.conftest import SMALL_ALL
    config = load_config(None, SMALL_ALL)
    assets = {"tokenizer": BPETokenizer.train(["a dog barks", "a cat"], 300)}
    source = [{"id": "0", "text": "a dog barks", "audio": b"not audio at all"}, {"id": "1", "text": "a cat"}]
    batch, count, _ = next(pipeline.eval_batches(source, config, assets, 4, modalities=["text"]))
    assert count == 2 and set(batch) == {"text/ids", "text/present"}
    assert batch["text/present"].tolist() == [True, True, False, False]
    # All modalities: the audio field is decoded, fails, and is skipped as absent.
    batch, _, _ = next(pipeline.eval_batches(source, config, assets, 4))
    assert any(k.startswith("audio/") and k != "audio/present" for k in batch)
    assert not batch["audio/present"].any()
