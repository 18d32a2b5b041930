"""Missing-modality robustness: zero-shot classification of examples holding several modalities,
with all of them as input vs with one dropped (marked absent). Under early fusion the examples are
embedded by the model's joint (fused) pass; under late fusion by averaging unimodal embeddings."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from omni.data import pipeline
from omni.eval.embedding import check_modality, modality_embed_fn
from omni.eval.zeroshot import DEFAULT_TEMPLATE, class_embeddings, templates_list
from omni.modalities import registry


def fused_embed_fn(setup):
    """params, numpy batch (presence bits as given) -> [B, E]: one joint pass of the fused encoder
    over every modality whose `<name>/present` bit is on (absent ones are masked out of attention),
    then each present modality's CLS output through its own projection, L2-normalised; the example's
    embedding is the normalised mean of those. With exactly one modality present this equals its
    unimodal `Omni.embed` (absent tokens are invisible to attention). Compiled once per Setup."""
    cache = setup.__dict__.setdefault("_embed_fns", {})
    if "<fused>" in cache:
        return cache["<fused>"]

    graphdef = setup.graphdef
    replicated = NamedSharding(setup.mesh, PartitionSpec())

    def normalise(z):
        return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)

    def fused(params, batch):
        model = nnx.merge(graphdef, params)
        xs, valids, starts, start = [], [], [], 0
        for name in model.modality_names:
            tokens, valid = model.stems[name].embed(batch, model.dtype)
            x, valid = model.sequence(name, tokens, valid, batch[f"{name}/present"])
            xs.append(x)
            valids.append(valid)
            starts.append(start)
            start += x.shape[1]
        h = model.encoder(jnp.concatenate(xs, axis=1), jnp.concatenate(valids, axis=1))
        total, count = 0.0, 0.0
        for name, first in zip(model.modality_names, starts):
            present = batch[f"{name}/present"].astype(jnp.float32)[:, None]
            z = normalise(model.projections[name](model.final_norm(h[:, first]), model.dtype))
            total, count = total + z * present, count + present
        return normalise(total / jnp.maximum(count, 1.0))

    jitted = jax.jit(fused, out_shardings=replicated)

    def run(params, batch):
        batch = {k: jax.make_array_from_process_local_data(replicated, v) for k, v in batch.items()}
        with jax.set_mesh(setup.mesh):
            return np.asarray(jitted(params, batch))

    cache["<fused>"] = run
    return run


def _drop(batch, config, keep):
    """The batch with every modality outside `keep` marked absent (presence off, arrays emptied)."""
    out = dict(batch)
    for name in config.modalities:
        if name not in keep:
            out[f"{name}/present"] = np.zeros_like(batch[f"{name}/present"])
            for key, empty in registry.get(name).empty(config).items():
                out[key] = np.broadcast_to(empty, batch[key].shape).copy()
    return out


def fused_embed_records(setup, params, source, config, assets, modalities, conditions, fusion="early",
                        max_examples=None):
    """Embeddings of the labelled records that hold every modality in `modalities`, under each
    condition (a tuple of the modalities kept as input; the rest are marked absent).
    -> ({condition: [N, E]}, records). fusion="early": the joint pass (fused_embed_fn);
    fusion="late": the normalised mean of the kept modalities' unimodal embeddings."""
    if fusion not in ("early", "late"):
        raise ValueError(f"fusion must be 'early' or 'late', got {fusion!r}")
    fused = fused_embed_fn(setup) if fusion == "early" else None
    unimodal = {m: modality_embed_fn(setup, m) for m in modalities} if fusion == "late" else None
    out = {c: [] for c in conditions}
    kept = []
    for batch, count, records in pipeline.eval_batches(source, config, assets, int(config.eval.batch_size),
                                                       max_examples):
        use = np.zeros(len(batch[f"{modalities[0]}/present"]), bool)
        use[:count] = [bool(r.get("label")) for r in records]
        for m in modalities:
            use &= batch[f"{m}/present"]
        if fusion == "late":
            z = {m: unimodal[m](params, batch) for m in modalities}
        for condition in conditions:
            if fusion == "early":
                e = fused(params, _drop(batch, config, condition))
            else:
                e = np.mean([z[m] for m in condition], axis=0)
                e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
            out[condition].append(e[use])
        kept.extend(r for r, u in zip(records, use[:count]) if u)
    width = config.model.embed_dim
    return {c: (np.concatenate(v) if v else np.zeros((0, width), np.float32)) for c, v in out.items()}, kept


def missing_modality(setup, params, source, config, assets, modalities=None, template=DEFAULT_TEMPLATE,
                     fusion: str = "early", max_examples=None) -> dict:
    """Zero-shot classification (class prompts as in `zeroshot`) of the labelled examples that hold
    every one of `modalities` (default: all configured), first with all of them as input ("all"),
    then with each one dropped ("without_<m>": marked absent, as a missing field would be: presence
    bit off, arrays emptied). Configured modalities outside `modalities` are absent throughout.

    fusion="early" (default): the example is embedded by ONE joint pass of the early-fusion
    encoder over its present modalities (each present modality's CLS output, projected and
    normalised, averaged); with a single modality left this is exactly its unimodal embedding.
    fusion="late": the normalised mean of the present modalities' unimodal embeddings.
    Caveat: the joint-pass CLS outputs are not trained by the contrastive loss (it uses the
    unimodal pass), so "all" under early fusion measures how much the other modality's tokens move
    a modality's CLS, for better or worse; and text inputs that name the class make text-present
    conditions easy. -> {"accuracy": {"all", "without_<m>", ...}, "drop": {<m>: all - without_<m>},
    "n", "classes", "fusion", "modalities"}."""
    names = list(config.modalities.keys()) if modalities is None else list(modalities)
    if len(names) < 2:
        raise ValueError("missing-modality robustness needs at least 2 input modalities")
    for name in names:
        check_modality(config, name)
    check_modality(config, "text")
    templates = templates_list(template)
    order = [n for n in config.modalities if n in names]
    conditions = {"all": tuple(order)}
    for dropped in order:
        conditions[f"without_{dropped}"] = tuple(n for n in order if n != dropped)
    embeddings, records = fused_embed_records(setup, params, source, config, assets, order,
                                              list(conditions.values()), fusion, max_examples)
    labels = [r["label"] for r in records]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"missing-modality robustness needs at least 2 distinct labels among examples holding "
                         f"{' and '.join(order)}, found {len(classes)}")
    class_z = class_embeddings(setup, params, config, assets, classes, templates)
    truth = np.array([classes.index(label) for label in labels])
    accuracy = {name: float(np.mean(np.argmax(embeddings[c] @ class_z.T, axis=1) == truth))
                for name, c in conditions.items()}
    drop = {m: accuracy["all"] - accuracy[f"without_{m}"] for m in order}
    return {"accuracy": accuracy, "drop": drop, "n": int(len(truth)), "classes": len(classes), "fusion": fusion,
            "modalities": order}
