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
import re
from collections import Counter

import numpy as np

from omni.data.default.build import TEST_EVERY, _held_out
from omni.data.default.digits import PLACES, digit_records
from omni.data.default.vocabulary import COLORS

COLOUR_WORD = re.compile(r"\b(" + "|".join(COLORS) + r")\b")


def attributes(caption: str) -> dict:
    """The colour pair (ink, background, in caption order) and the place a digit caption names."""
    return {"colours": tuple(COLOUR_WORD.findall(caption)), "place": next(p for p in PLACES if p in caption)}


def expected_r_at_1(captions: list[str], key) -> float:
    """Mean over queries of (captions identical to its own) / (captions sharing key(query))."""
    groups = Counter(key(c) for c in captions)
    same_text = Counter(captions)
    return float(np.mean([same_text[c] / groups[key(c)] for c in captions]))


def main() -> None:
    held_out = [r["text"] for r in _held_out(digit_records()) if r["split"] == "test"]
    parsed = {c: attributes(c) for c in held_out}
    print(json.dumps({
        "held_out_images": len(held_out), "test_every": TEST_EVERY,
        "colour_pairs": len({p["colours"] for p in parsed.values()}),
        "R@1_chance": expected_r_at_1(held_out, lambda c: 0),
        "R@1_colours_only": expected_r_at_1(held_out, lambda c: parsed[c]["colours"]),
        "R@1_colours_and_place": expected_r_at_1(held_out, lambda c: (parsed[c]["colours"], parsed[c]["place"])),
    }, indent=1))


if __name__ == "__main__":
    main()
