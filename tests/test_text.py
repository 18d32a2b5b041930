import numpy as np
import pytest

from omni.modalities.text import MASK_ID, PAD_ID, BPETokenizer, encode_padded

CORPUS = ["a red handwritten seven on a blue background", "the digit 3 written in green over white",
          "Python's reference documentation is real English prose."] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(CORPUS, vocab_size=300)


@pytest.mark.parametrize("text", [
    "a red handwritten seven", "unseen words: zebra quokka!", "ünïcødé ✓ 漢字 and emoji 🙂", "", "  two  spaces "])
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids_and_merges(tokenizer):
    ids = tokenizer.encode("a red handwritten seven")
    assert PAD_ID not in ids and MASK_ID not in ids
    # BPE merged frequent words: fewer tokens than bytes.
    assert len(ids) < len("a red handwritten seven")
    assert tokenizer.vocab_size <= 300


def test_save_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok.json")
    loaded = BPETokenizer.load(tmp_path / "tok.json")
    assert loaded.encode("the digit 3") == tokenizer.encode("the digit 3")


def test_load_corrupt_file_names_path(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tok.json"):
        BPETokenizer.load(bad)


def test_encode_padded(tokenizer):
    ids = encode_padded(tokenizer, "a red handwritten seven on a blue background " * 5, 8)
    assert ids.shape == (8,) and ids.dtype == np.int32 and (ids != PAD_ID).all()
    short = encode_padded(tokenizer, "a", 8)
    assert (short[1:] == PAD_ID).all() and short[0] != PAD_ID
