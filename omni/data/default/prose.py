"""A text-only corpus: sentences of CPython's own bundled reference documentation
(`pydoc_data.topics`), real English prose for masked language modelling."""
from __future__ import annotations

import re

import numpy as np
from pydoc_data.topics import topics


def prose_sentences(limit: int) -> list[str]:
    """`limit` sentences of 30-200 characters from the Python reference docs bundled with CPython,
    a fixed random choice kept in document order."""
    sentences = []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if 30 <= len(sentence) <= 200 and sentence[0].isupper() and "*" not in sentence:
                sentences.append(sentence)
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(sentences))[:limit]
    return [sentences[i] for i in sorted(keep)]
