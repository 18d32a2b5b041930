"""The share of the encoder's token slots that hold valid tokens, per training batch: what
model.token_capacity must cover (omni/run/capacity.py measures it on a run's first 32 batches).

    python benchmarks/encoder_fill.py configs/tiny.py 300
    python benchmarks/encoder_fill.py configs/base.py 100 --config.train.batch_size=4

Prints the mean, the smallest and the largest share over the first N batches of the default data
(the whole batch as one shard).
"""
from __future__ import annotations

import sys

from omni.bench.batches import real_data
from omni.config import load_config
from omni.data import pipeline
from omni.run.capacity import real_shares


def main(path: str, batches: int, overrides: list[str]) -> None:
    config, source, assets = real_data(load_config(path, overrides + ["--config.model.token_capacity=1.0"]))
    reader = pipeline.BatchReader(source, pipeline.batch_plans(source, config, assets), processes=1, process=0)
    shares = real_shares(config, (reader(step)[0] for step in range(batches)), shards=1)[:, 0]
    print(f"{path} {' '.join(overrides)}: {batches} batches, real share of the encoder's slots "
          f"mean {shares.mean():.3f}, smallest {shares.min():.3f}, largest {shares.max():.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
