"""What a run's image -> text ranking gets right on the default dataset's held-out digit images:
the colours, the place, the digit (docs/evaluation.md, "Why re-ranking does not help here").

    python benchmarks/caption_attributes.py runs/tiny [K]

Each caption names an ink and a background colour, a quadrant and a digit. For every image query
it prints how often the top-1 caption has the right colour pair, the right place and the right
digit: by the contrastive score and, for a run with a matching head on image-text, by the
matching logit alone among the contrastive top K (default 10). It also prints how many of the
top K share the query's colour pair and place: what re-ranking has to tell apart.

Last, linear probes: a logistic regression fitted on the training split's image (and caption)
embeddings, scored on the held-out ones, for the colour pair, the place and the digit. A probe at
chance says the embedding does not hold the attribute at all, whatever the ranking does with it.
"""
import sys

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression

from omni.data import pipeline
from omni.data.default.digits import caption_attributes
from omni.data.records import open_split
from omni.eval.embedding import embed_all
from omni.eval.rerank import modality_inputs, pair_scorer, top_k_scores
from omni.eval.retrieval import paired_rows
from omni.run.load import load_run


def digit_image_embeddings(setup, params, config, assets, split: str):
    """Image and caption embeddings of a split's digit images -> (z_image, z_text, attributes)."""
    source = open_split(pipeline.resolve_data_dir(config), split)
    embedded = embed_all(setup, params, source, config, assets, ["image", "text"])
    (z_image, images), (z_text, texts) = embedded["image"], embedded["text"]
    row_of = {record["id"]: i for i, record in enumerate(texts)}
    keep = [i for i, record in enumerate(images) if record["id"].startswith("digit-")]
    cols = [row_of[images[i]["id"]] for i in keep]
    colours, place = zip(*(caption_attributes(texts[j]["text"]) for j in cols))
    attributes = {"colours": np.array(["/".join(c) for c in colours]), "place": np.array(place),
                  "digit": np.array([texts[j]["label"] for j in cols])}
    return z_image[keep], z_text[cols], attributes


def probe_attributes(setup, params, config, assets) -> None:
    """Held-out accuracy of a linear probe per attribute, on the image and the caption embeddings."""
    train = digit_image_embeddings(setup, params, config, assets, "train")
    test = digit_image_embeddings(setup, params, config, assets, "test")
    for side, name in ((0, "image"), (1, "caption")):
        scores = []
        for attribute in ("colours", "place", "digit"):
            probe = LogisticRegression(C=10.0, max_iter=3000).fit(train[side], train[2][attribute])
            scores.append(f"{attribute} {probe.score(test[side], test[2][attribute]):.3f}")
        print(f"linear probe on the {name} embedding ({len(train[2]['place'])} train, "
              f"{len(test[2]['place'])} held out): " + ", ".join(scores))


def main(workdir: str, k: int = 10) -> None:
    config, setup, params, assets, _ = load_run(workdir)
    source = open_split(pipeline.resolve_data_dir(config), "test")
    with jax.set_mesh(setup.mesh):
        embedded = embed_all(setup, params, source, config, assets, ["image", "text"])
        (z_image, images), (z_text, texts) = embedded["image"], embedded["text"]
        rows, cols, correct = paired_rows(images, texts, "text")
        similarity = z_image[rows] @ z_text[cols].T
        rankings = {"contrastive": np.argmax(similarity, axis=1)}
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        if "itm_head" in params:
            scorer = pair_scorer(setup, params, config, "image", "text",
                                 modality_inputs([images[i] for i in rows], config, assets, "image"),
                                 modality_inputs([texts[j] for j in cols], config, assets, "text"))
            top, matching = top_k_scores(similarity, k, scorer)
            rankings["matching alone"] = top[np.arange(len(top)), np.argmax(matching, axis=1)]
    captions = [texts[j]["text"] for j in cols]
    colours, place = zip(*(caption_attributes(c) for c in captions))
    colours, place = np.array(["/".join(c) for c in colours]), np.array(place)
    digit = np.array([texts[j]["label"] for j in cols])
    own = np.arange(len(rows))  # query i's own caption is target i
    for name, pick in rankings.items():
        print(f"{name:15s} R@1 {correct[np.arange(len(pick)), pick].mean():.3f}  top-1 has the right "
              f"colours {np.mean(colours[pick] == colours[own]):.3f}, place {np.mean(place[pick] == place[own]):.3f}, "
              f"digit {np.mean(digit[pick] == digit[own]):.3f}")
    print(f"of each query's contrastive top {k}: {np.mean(colours[top] == colours[own][:, None]):.3f} share its "
          f"colours, {np.mean(place[top] == place[own][:, None]):.3f} its place, "
          f"{np.mean(digit[top] == digit[own][:, None]):.3f} its digit")
    with jax.set_mesh(setup.mesh):
        probe_attributes(setup, params, config, assets)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
