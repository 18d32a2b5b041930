"""Train on the default dataset with its digit images and motion clips batched by colour pair
(docs/evaluation.md, "Batches of one colour pair do not help"): `omni train` with each record's
group replaced by the colours its caption names (images and clips apart), every other record,
speech included, ungrouped. Pass `--config.data.group_size=K` for runs of K.

    python benchmarks/colour_pair_batches.py train --workdir runs/cg4 --config.data.group_size=4 \
        --config.loss.itm.weight=3.0 --config.loss.itm.pairs=image-text,video-text --config.loss.itm.rows=16
"""
import sys

import numpy as np

from omni.cli import main
from omni.data import records
from omni.data.default.digits import COLOUR_WORD

_by_split = {}


def colour_pair_groups(split) -> np.ndarray:
    """Group ids for a split: '<image|video> colours <ink>/<background>' from the caption, else -1."""
    key = (str(split.path), split.split)
    if key not in _by_split:
        ids = []
        for i in range(len(split)):
            record = split[i]
            kind = "image" if record.get("image") else "video" if record.get("video") else None
            colours = COLOUR_WORD.findall(record.get("text", ""))
            ids.append(records.group_id(f"{kind} colours " + "/".join(colours[:2])) if kind and colours else -1)
        _by_split[key] = np.array(ids, np.int64)
    return _by_split[key]


records.Split.groups = colour_pair_groups  # in place of the index the build wrote

if __name__ == "__main__":
    sys.exit(main())
