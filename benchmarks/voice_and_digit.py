"""What a run's audio and text embeddings tell apart on the default dataset's held-out spoken
digits: the voice, the digit, or both (docs/evaluation.md, "What kept audio near chance").

    python benchmarks/voice_and_digit.py runs/tiny

Prints, for the text and the audio embeddings, the mean cosine between two clips (or captions)
with the same voice and another digit, another voice and the same digit, ...; and for each
audio -> text and text -> audio query, whether its top-1 target has the right voice and the
right digit.
"""
import re
import sys

import jax
import numpy as np

from omni.data import pipeline
from omni.data.records import open_split
from omni.eval.embedding import embed_all
from omni.run.load import load_run

KINDS = [("same voice, same digit", True, True), ("same voice, other digit", True, False),
         ("other voice, same digit", False, True), ("other voice, other digit", False, False)]


def main(workdir: str) -> None:
    config, setup, params, assets, _ = load_run(workdir)
    source = open_split(pipeline.resolve_data_dir(config), "test")
    with jax.set_mesh(setup.mesh):
        embedded = embed_all(setup, params, source, config, assets, ["audio", "text"])
    z_audio, clips = embedded["audio"]
    z_text_all, texts = embedded["text"]
    row_of = {r["id"]: i for i, r in enumerate(texts)}
    z_text = z_text_all[[row_of[r["id"]] for r in clips]]  # each clip's own caption
    digit = np.array([r["label"] for r in clips])
    voice = np.array([re.search(r"voice (\S+)", r["source"]).group(1) for r in clips])
    same_digit, same_voice = digit[:, None] == digit[None], voice[:, None] == voice[None]
    off_diagonal = ~np.eye(len(clips), dtype=bool)
    for name, z in (("text", z_text), ("audio", z_audio)):
        cosine = z @ z.T
        for kind, want_voice, want_digit in KINDS:
            mask = (same_voice == want_voice) & (same_digit == want_digit) & off_diagonal
            print(f"{name:5s} {kind:25s} mean cosine {cosine[mask].mean():.3f}")
    similarity = z_audio @ z_text.T
    for direction, top in (("audio -> text", similarity.argmax(1)), ("text -> audio", similarity.argmax(0))):
        print(f"{direction}: top-1 has the right voice {np.mean(voice[top] == voice):.3f}, "
              f"the right digit {np.mean(digit[top] == digit):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
