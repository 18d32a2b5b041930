"""Batches by modality set (omni.data.mixture, omni.data.pipeline): rows per set from data.mixture
or the data's proportions; each set's order a pure function of (seed, position), the same across
a resume and across 1 and 2 processes; and the loss over sub-batches equal to the loss of the
padded layout (every modality in every row, absent ones switched off) on the same examples."""
import jax
import numpy as np
import pytest
from flax import nnx

from omni import objectives, parallel
from omni.data import mixture, pipeline
from omni.data.records import open_split, write_dataset
from omni.errors import ConfigError
from omni.modalities import registry
from omni.modalities.text import BPETokenizer
from omni.run.setup import build_setup
from tests.conftest import small_config

TEXT, PAIR = ("text",), ("image", "text")


def test_integer_rows_that_fill_the_batch_are_rows_and_names_take_any_order():
    config = small_config("--config.data.mixture=text+image=6, text=2")
    resolved = mixture.resolve(config)
    assert [(s.modalities, s.rows) for s in resolved.sub_batches] == [(PAIR, 6), (TEXT, 2)]
    assert resolved.spec() == "image+text=6,text=2"


def test_weights_become_rows_in_multiples_by_largest_remainder():
    config = small_config("--config.train.batch_size=64", "--config.data.rows_multiple=8",
                          "--config.data.mixture=image+text=3,text=1")
    rows = {s.modalities: s.rows for s in mixture.resolve(config).sub_batches}
    assert rows == {PAIR: 48, TEXT: 16}
    # proportions: 8 multiples of 8 split 0.6 / 0.4 -> 4.8 / 3.2 -> 5 / 3
    config = small_config("--config.train.batch_size=64", "--config.data.rows_multiple=8")
    rows = {s.modalities: s.rows for s in mixture.resolve(config, {PAIR: 600, TEXT: 400}).sub_batches}
    assert rows == {PAIR: 40, TEXT: 24}


def test_text_lengths_are_measured_per_set_on_the_data(data):
    config, source, assets = data
    config = config.copy_and_resolve_references()
    config.modalities.text.max_len = 64
    lengths = mixture.text_lengths(pipeline.with_text_lengths(config, source, assets), mixture.resolve(config))
    configured = list(config.modalities.keys())
    masks = mixture.record_sets(source, configured)
    for held, length in lengths.items():
        indices = np.flatnonzero(masks == mixture.mask_of(held, configured))[:300]
        counts = np.array([len(assets["tokenizer"].encode(source[int(i)]["text"])) for i in indices])
        assert length % 2 == 0 and length <= 64
        assert np.mean(counts <= length) >= 0.97 or length == 64, (held, length)  # 99% of a sample, or the cap
        assert np.mean(counts <= length - 2) < 0.99 or length == 2  # and is not longer than that needs
    assert lengths[PAIR] < lengths[TEXT]  # captions are shorter than prose


def test_auto_multiple_leaves_sixteen_shares():
    assert [mixture.rows_multiple(small_config(f"--config.train.batch_size={b}")) for b in (4, 8, 64, 256, 96)] \
        == [1, 1, 4, 16, 4]


def test_a_set_without_rows_is_reported_not_dropped_silently():
    config = small_config("--config.train.batch_size=8")  # 8 multiples of 1
    resolved = mixture.resolve(config, {PAIR: 1000, TEXT: 998, ("image",): 3})
    assert {s.modalities for s in resolved.sub_batches} == {PAIR, TEXT}
    assert resolved.unused == {"image": 3}


@pytest.mark.parametrize("text,problem", [("image+audio=4,text=4", "not a set of configured modalities"),
                                          ("text=4,text=4", "given twice"), ("text=x", "SET=ROWS"),
                                          ("text=-1", ">= 0")])
def test_bad_mixture_names_the_key_and_the_entry(text, problem):
    with pytest.raises(ConfigError, match=problem) as error:
        mixture.resolve(small_config(f"--config.data.mixture={text}"))
    assert "data.mixture" in str(error.value)


def test_rows_that_do_not_split_over_the_mesh_are_refused():
    config = small_config("--config.data.mixture=image+text=6,text=2")
    with pytest.raises(ConfigError, match="image\\+text has 6 rows, not divisible by the 4 batch shards"):
        mixture.check_divides(mixture.resolve(config), 4, 1)


def test_the_modality_index_written_with_the_records_matches_reading_them(tmp_path):
    records = [{"id": f"r{i}", "text": f"caption {i}"} for i in range(12)]
    records[3]["smell"] = '{"smiles": ["CCO"]}'
    write_dataset({"train": records}, tmp_path)
    split = open_split(tmp_path, "train")
    names = ["smell", "text"]
    indexed = mixture.record_sets(split, names)
    (split.path / mixture.MODALITY_INDEX.format(split="train")).unlink()
    np.testing.assert_array_equal(indexed, mixture.record_sets(split, names))
    assert mixture.set_counts(indexed, names) == {("text",): 11, ("smell", "text"): 1}


@pytest.fixture(scope="module")
def data(default_data):
    config = small_config("--config.data.mixture=image+text=4,text=4", "--config.train.steps=6")
    source = open_split(default_data, "train")
    assets = {"tokenizer": BPETokenizer.train(pipeline.corpus_lines(source, 2000), config.modalities.text.vocab_size)}
    return config, source, assets


def batches(config, source, assets, start=0, count=3):
    iterator = pipeline.training_batches(source, config, assets, start_step=start)
    return [next(iterator)[0] for _ in range(count)]


def test_each_sub_batch_holds_only_its_modalities(data):
    config, source, assets = data
    batch = batches(*data, count=1)[0]
    assert set(batch) == {"image+text", "text"}
    assert set(batch["text"]) == {"text/ids", "text/present", "example_id"}
    assert batch["image+text"]["image/pixels"].shape[0] == 4 and batch["text"]["text/ids"].shape[0] == 4


def test_each_sets_order_survives_a_resume_and_does_not_depend_on_the_processes(data, monkeypatch):
    whole = batches(*data, count=3)
    resumed = batches(*data, start=2, count=1)[0]
    jax.tree.map(np.testing.assert_array_equal, resumed, whole[2])
    halves = []
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    for process in (0, 1):
        monkeypatch.setattr(pipeline.jax, "process_index", lambda p=process: p)
        halves.append(batches(*data, count=3))
    for step in range(3):  # process p reads the p-th contiguous half of every sub-batch
        joined = jax.tree.map(lambda a, b: np.concatenate([a, b]), halves[0][step], halves[1][step])
        jax.tree.map(np.testing.assert_array_equal, joined, whole[step])
    # the sets draw from their own records, all different within a step
    ids = np.concatenate([sub["example_id"] for sub in whole[0].values()])
    assert len(set(ids.tolist())) == len(ids)


def padded(batch: dict, config) -> dict:
    """The same examples in today's padded layout: every configured modality in every row, the
    ones a sub-batch lacks as zeros with their presence bit off, text padded to max_len."""
    rows = []
    for sub in batch.values():
        n = len(sub["example_id"])
        full = dict(sub)
        ids = sub["text/ids"]
        full["text/ids"] = np.pad(ids, ((0, 0), (0, config.modalities.text.max_len - ids.shape[1])))
        for name in config.modalities:
            if f"{name}/present" not in sub:
                for key, value in registry.get(name).empty(config).items():
                    full[key] = np.zeros((n, *value.shape), value.dtype)
                full[f"{name}/present"] = np.zeros(n, bool)
        rows.append(full)
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def test_loss_over_sub_batches_equals_the_padded_step(data):
    config, source, assets = data
    config = config.copy_and_resolve_references()
    config.data.modality_dropout = 0.5  # rows with a modality switched off inside their sub-batch
    config.data.text_lengths = "image+text=8"  # captions at their own length, prose at max_len (12)
    batch = batches(config, source, assets, count=1)[0]
    assert batch["image+text"]["text/ids"].shape[1] == 8 and batch["text"]["text/ids"].shape[1] == 12
    setup = build_setup(config, parallel.make_mesh((1, 1, 1)))
    params = setup.init_state()["params"]
    loss = jax.jit(lambda p, b, rng: objectives.total_loss(nnx.merge(setup.graphdef, p), b, rng, config)[1])
    rng = jax.random.key(3)
    by_set, flat = loss(params, batch, rng), loss(params, padded(batch, config), rng)
    losses = {key: value for key, value in by_set.items() if key.startswith("loss")}
    assert set(losses) <= set(flat)
    for key, value in losses.items():
        np.testing.assert_allclose(value, flat[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert float(by_set["loss/mmm"]) > 0 and float(by_set["loss/contrastive"]) > 0
    assert any(float(by_set[f"loss/{o}"]) > 0 for o in ("mlm", "mim"))  # dropout made single rows
