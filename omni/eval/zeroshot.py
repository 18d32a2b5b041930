"""Zero-shot classification: each example goes to its most similar class prompt; one template or
an ensemble (a class's embedding is the L2-normalised mean of its templates' embeddings)."""
from __future__ import annotations

import numpy as np

from omni.eval.embedding import ListSource, check_modality, embed_records, labelled

DEFAULT_TEMPLATE = "a photo of a {}"


def templates_list(template) -> list[str]:
    """A template string, or a list of them -> a non-empty list; each must hold one `{}`."""
    templates = [DEFAULT_TEMPLATE] if template is None else (
        [template] if isinstance(template, str) else list(template))
    if not templates:
        raise ValueError("no prompt template given")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(f"prompt template {t!r} must contain '{{}}' where the class name goes")
    return templates


def ensemble(template_embeddings: np.ndarray) -> np.ndarray:
    """[C, T, E] embeddings of each class under each template -> [C, E]: the L2-normalised mean."""
    mean = np.asarray(template_embeddings, np.float32).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def class_embeddings(setup, params, config, assets, classes, template=DEFAULT_TEMPLATE) -> np.ndarray:
    """[C, E] text embedding of each class name: the normalised mean over the templates."""
    templates = templates_list(template)
    records = [{"id": f"class-{i}-{j}", "text": t.format(c)}
               for i, c in enumerate(classes) for j, t in enumerate(templates)]
    z, kept = embed_records(setup, params, ListSource(records), config, assets, "text")
    if len(kept) != len(records):
        raise ValueError("a class prompt could not be encoded as text")
    return ensemble(z.reshape(len(classes), len(templates), -1))


def zeroshot(setup, params, source, config, assets, modality: str, template=DEFAULT_TEMPLATE,
             max_examples=None) -> dict:
    """Classify each example of `modality` by its most similar class embedding: the classes are the
    distinct labels of the split; `template` is one prompt template ("a photo of a {}") or a list
    of them (an ensemble: the class embedding is the normalised mean of its prompts' embeddings)."""
    check_modality(config, modality)
    templates = templates_list(template)
    z, records = embed_records(setup, params, source, config, assets, modality, max_examples)
    z, labels = labelled(z, records)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"zero-shot needs at least 2 distinct labels in the split, found {len(classes)}")
    class_z = class_embeddings(setup, params, config, assets, classes, templates)
    truth = np.array([classes.index(label) for label in labels])
    predicted = np.argmax(z @ class_z.T, axis=1)
    return {"accuracy": float(np.mean(predicted == truth)), "n": int(len(truth)), "classes": len(classes)}
