"""What length buckets would buy: the token fill of a config's mixture on the default data if each
modality set's texts were split into N buckets by length (each bucket its own sub-batch, with the
text length that covers 99% of its texts, as `data.text_lengths` is measured), for N = 1..4.

    python benchmarks/text_fill.py configs/tiny.py

Every non-text modality counts as full and modality dropout as off, so N = 1 reads above what
`omni bench` prints (its token_fill also pays for the dropped modalities' slots). Used to choose
against buckets in docs/performance.md.
"""
from __future__ import annotations

import sys

import numpy as np

from omni.bench.batches import real_data
from omni.config import load_config
from omni.data import mixture
from omni.modalities import registry


def fill_with_buckets(config, source, tokenizer, buckets: int) -> float:
    configured = list(config.modalities.keys())
    masks = mixture.record_sets(source, configured)
    longest = int(config.modalities.text.max_len)
    slots_of = {n: registry.get(n).num_tokens(config) + 1 for n in configured}  # CLS included
    real = slots = 0.0
    for sub in mixture.resolve(config, mixture.set_counts(masks, configured)).sub_batches:
        others = sum(slots_of[n] for n in sub.modalities if n != "text")
        if "text" not in sub.modalities:
            real, slots = real + sub.rows * others, slots + sub.rows * others
            continue
        records = np.flatnonzero(masks == mixture.mask_of(sub.modalities, configured))
        texts = [source[int(i)]["text"] for i in records]
        tokens = np.minimum(longest, [len(tokenizer.encode(t)) for t in texts])
        by_chars = np.argsort([len(t) for t in texts], kind="stable")  # buckets by characters: no tokenizer at build time
        for bucket in np.array_split(by_chars, buckets):
            length = min(longest, int(np.ceil(np.percentile(tokens[bucket], 99))))
            rows = sub.rows * len(bucket) / len(records)
            real += rows * (others + 1 + np.minimum(tokens[bucket], length).mean())
            slots += rows * (others + 1 + length)
    return real / slots


def main(path: str) -> None:
    config, source, assets = real_data(load_config(path, []))
    for buckets in (1, 2, 3, 4):
        print(f"{path}: {buckets} bucket(s) per set, token fill {fill_with_buckets(config, source, assets['tokenizer'], buckets):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs/tiny.py")
