"""Media stored already decoded (`omni data build --preprocess-for CONFIG`, omni.modalities.stored):
training reads exactly the arrays its raw files would give, and a run of other shapes is refused."""
import jax
import numpy as np
import pytest

from omni.data import pipeline
from omni.data.default.build import hold_out
from omni.data.default.digits import digit_records
from omni.data.default.motion import motion_clip_records
from omni.data.default.speech import spoken_digit_records
from omni.data.records import open_split, write_dataset
from omni.errors import DataError
from omni.modalities import registry, stored
from omni.run.assets import load_or_fit_assets
from tests.conftest import SMALL_ALL
from omni.config import load_config


def small_records():
    """A few real records of every media kind, with their captions: images, speech, moving digits."""
    kinds = [digit_records()[:40], spoken_digit_records(24), motion_clip_records(24)]
    splits = {"train": [], "test": []}
    for record in (r for records in kinds for r in hold_out(records)):
        splits[record["split"]].append(record)
    return splits


@pytest.fixture(scope="module")
def raw_and_stored(tmp_path_factory):
    config = load_config(None, [*SMALL_ALL, "--config.modalities=text,image,audio,video", "--config.train.steps=3",
                                "--config.data.mixture=image+text=4,audio+text=2,text+video=2"])
    splits = small_records()
    raw = write_dataset(splits, tmp_path_factory.mktemp("raw"))
    preprocessed = {split: [stored.preprocess_record(r, config) for r in rows] for split, rows in splits.items()}
    kept = write_dataset(preprocessed, tmp_path_factory.mktemp("stored"))
    stored.write_spec(open_split(kept, "train").path, config)
    return config, raw, kept


def first_image(data_dir) -> bytes:
    split = open_split(data_dir, "train")
    return next(split[i]["image"] for i in range(len(split)) if split[i]["image"])


def batches(config, data_dir, assets):
    config = config.copy_and_resolve_references()
    config.data.path = str(data_dir)
    source = open_split(data_dir, "train")
    return [batch for batch, _ in pipeline.training_batches(source, config, assets)]


def test_stored_media_train_on_the_arrays_their_files_give(raw_and_stored, tmp_path):
    config, raw, kept = raw_and_stored
    assert stored.is_stored(first_image(kept)) and not stored.is_stored(first_image(raw))
    assets, _ = load_or_fit_assets(config, tmp_path, None, open_split(raw, "train"))
    from_files, from_stored = batches(config, raw, assets), batches(config, kept, assets)
    assert len(from_files) == len(from_stored) == 3
    for a, b in zip(from_files, from_stored):
        assert a.keys() == b.keys() == {"image+text", "audio+text", "text+video"}
        jax.tree.map(np.testing.assert_array_equal, a, b)
        assert a["text+video"]["video/frames"].any() and a["audio+text"]["audio/waveform"].any()


def test_a_run_of_other_shapes_is_refused_by_name(raw_and_stored, tmp_path):
    config, _, kept = raw_and_stored
    wider = config.copy_and_resolve_references()
    wider.modalities.image.size = 32
    with pytest.raises(ValueError, match=r"modalities\.image") as refused:
        stored.check_spec(open_split(kept, "train").path, wider)
    assert "stored_arrays.json" in str(refused.value)
    image = first_image(kept)
    with pytest.raises(ValueError, match=r"image/pixels is \(16, 16, 3\) uint8, this config wants \(32, 32, 3\)"):
        stored.encode(registry.get("image"), image, wider, {})
    wider.data.path = str(kept)
    with pytest.raises(DataError, match="--preprocess-for"):
        next(pipeline.training_batches(open_split(kept, "train"), wider, {}))
