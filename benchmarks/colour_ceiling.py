"""How far image <-> text retrieval on the default dataset's held-out digit images gets from the
colours alone (docs/evaluation.md, "The default run with matching on").

    python benchmarks/colour_ceiling.py

Each caption names an ink and a background colour, a place and a digit. A ranking that reads the
colours perfectly and nothing else puts a query's own caption first with probability 1 / (the
number of held-out captions with the query's colour pair), counting captions identical to its
own as right, as `omni eval retrieval` does. The mean of that over the queries is the R@1 such a
ranking expects; the same with the place known too says what reading the place would add.
"""
import json
from collections import Counter

import numpy as np

from omni.data.default.build import TEST_EVERY, hold_out
from omni.data.default.digits import caption_attributes, digit_records


def expected_r_at_1(captions: list[str], key) -> float:
    """Mean over queries of (captions identical to its own) / (captions sharing key(query))."""
    groups = Counter(key(c) for c in captions)
    same_text = Counter(captions)
    return float(np.mean([same_text[c] / groups[key(c)] for c in captions]))


def main() -> None:
    held_out = [r["text"] for r in hold_out(digit_records()) if r["split"] == "test"]
    parsed = {c: caption_attributes(c) for c in held_out}  # {caption: (colours, place)}
    print(json.dumps({
        "held_out_images": len(held_out), "test_every": TEST_EVERY,
        "colour_pairs": len({colours for colours, _ in parsed.values()}),
        "R@1_chance": expected_r_at_1(held_out, lambda c: 0),
        "R@1_colours_only": expected_r_at_1(held_out, lambda c: parsed[c][0]),
        "R@1_colours_and_place": expected_r_at_1(held_out, lambda c: parsed[c]),
    }, indent=1))


if __name__ == "__main__":
    main()
