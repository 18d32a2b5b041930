"""Evaluation of a trained run. Every function returns a JSON-able dict; `write_result` puts it in
WORKDIR/eval/<name>.json, and `periodic_evaluations` runs the tasks named in config.eval.tasks
during training as flat `eval/<task>/...` metrics.

  * retrieval            R@1/5/10 between two modalities (several correct targets per query).
  * zeroshot             classify by the most similar class prompt; one template or an ensemble
                         (a class's embedding is the L2-normalised mean of its templates' embeddings).
  * linear_probe         frozen embeddings -> L2-regularised multinomial logistic regression; the
                         regularisation strength C is chosen on a validation split carved
                         deterministically out of the training examples, then refit on all of them.
  * paired_compositional Winoground (Thrush et al. 2022): text, image and group scores over
                         user-given pairs of captions with the same words in a different order.
  * missing_modality     zero-shot classification of examples holding several modalities, with all
                         of them as input vs with one dropped (marked absent).

Embeddings come from each modality's unimodal pass (the same `Omni.embed` that the contrastive
loss trains), in fixed-shape batches through one jitted function per modality; missing_modality
with fusion="early" also runs the model's joint (fused) pass.

Pairs file for `paired_compositional` (JSON lines, one group per line; paths relative to the file):

    {"id": "g1", "caption_0": "a red square on black", "caption_1": "a black square on red",
     "image_0": "img/red_on_black.png", "image_1": "img/black_on_red.png"}

caption_i describes input_i. The second modality is the one named by the `<modality>_0` /
`<modality>_1` keys (image here; audio_0/audio_1 etc. for other modalities); every line must use
the same one. A string value is a file path (its bytes are decoded like a dataset's files); any
other JSON value is handed to the modality's encoder as it is. `id` is optional.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np

from omni.data import pipeline
from omni.data.manifest import json_lines
from omni.modalities import registry

RECALL_AT = (1, 5, 10)
DEFAULT_TEMPLATE = "a photo of a {}"
PROBE_CS = tuple(float(c) for c in 10.0 ** np.arange(-2, 5))  # 0.01 .. 10,000 (inverse L2 strength)
TASKS = ("retrieval", "zeroshot", "linear_probe", "paired", "robustness")
WINOGROUND_CHANCE = {"text_score": 0.25, "image_score": 0.25, "group_score": 1 / 6}


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


# ==============================================================================================
# Retrieval
# ==============================================================================================

def recall_at_k(similarity: np.ndarray, correct: np.ndarray, ks=RECALL_AT) -> dict[str, float]:
    """similarity [Q, T]; correct [Q, T] bool (several correct targets per query allowed).
    R@K = fraction of queries with at least one correct target among their K most similar."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(correct, order, axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), np.inf)
    return {f"R@{k}": float(np.mean(first_hit < k)) for k in ks}


def embed_records(setup, params, source, config, assets, modality: str, max_examples=None):
    """Embeddings [N, E] of every record (in order) that holds `modality`, and those records."""
    return embed_all(setup, params, source, config, assets, [modality], max_examples)[modality]


def embed_all(setup, params, source, config, assets, modalities, max_examples=None) -> dict:
    """modality -> (embeddings [N, E], records holding it), all from ONE pass over the records
    (each record is decoded once, however many modalities it holds)."""
    embeds = {m: _embed_fn(setup, m) for m in modalities}
    vectors = {m: [] for m in modalities}
    kept = {m: [] for m in modalities}
    batch_size = int(config.eval.batch_size)
    for batch, count, records in pipeline.eval_batches(source, config, assets, batch_size, max_examples,
                                                       modalities=modalities):
        for m in modalities:
            present = batch[f"{m}/present"][:count]
            if not present.any():
                continue
            z = embeds[m](params, batch)[:count]
            vectors[m].append(z[present])
            kept[m].extend(r for r, p in zip(records, present) if p)
    width = config.model.embed_dim
    return {m: (np.concatenate(vectors[m]) if vectors[m] else np.zeros((0, width), np.float32), kept[m])
            for m in modalities}


def _embed_fn(setup, modality):
    cache = setup.__dict__.setdefault("_embed_fns", {})
    if modality not in cache:
        cache[modality] = setup.embed_fn(modality)
    return cache[modality]


def _check_modality(config, name):
    registry.get(name)
    if name not in config.modalities:
        raise ValueError(f"modality '{name}' is not in this run's config.modalities")


def retrieval(setup, params, source, config, assets, query: str, target: str, max_examples=None) -> dict:
    """R@1/5/10 for query -> target over the examples that hold both modalities. A target counts as
    correct if it is the query's own pair or has exactly the same content (e.g. a repeated caption),
    since no model can tell identical inputs apart."""
    for name in (query, target):
        _check_modality(config, name)
    embedded = embed_all(setup, params, source, config, assets, [query, target], max_examples)
    return retrieval_scores(*embedded[query], *embedded[target], target)


def retrieval_scores(zq, rq, zt, rt, target: str) -> dict:
    """retrieval() on embeddings already computed: query (zq, records rq) -> target (zt, rt)."""
    target_ids = {r["id"] for r in rt}
    pairs = [i for i, r in enumerate(rq) if r["id"] in target_ids]
    index_of = {r["id"]: j for j, r in enumerate(rt)}
    rows = np.array(pairs, dtype=np.int64)
    cols = np.array([index_of[rq[i]["id"]] for i in pairs], dtype=np.int64)
    if len(rows) == 0:
        return {**{f"R@{k}": 0.0 for k in RECALL_AT}, **{f"R@{k}_chance": 0.0 for k in RECALL_AT}, "n": 0}
    zq, zt = zq[rows], zt[cols]
    content_ids: dict = {}
    keys = np.array([content_ids.setdefault(rt[j].get(target), len(content_ids)) for j in cols])
    correct = keys[:, None] == keys[None, :]
    return {**recall_at_k(zq @ zt.T, correct), **chance_recall(correct), "n": int(len(rows))}


def chance_recall(correct: np.ndarray, ks=RECALL_AT) -> dict[str, float]:
    """Expected R@K of a random ranking, R@K_chance: a query with c correct targets among N
    misses all of them in its top K with probability C(N-c, K) / C(N, K)."""
    n = correct.shape[1]
    counts = correct.sum(axis=1)
    out = {}
    for k in ks:
        miss = np.ones(len(counts))
        for j in range(min(k, n)):  # C(N-c, K)/C(N, K) = prod_j (N-c-j)/(N-j)
            miss *= np.clip(n - counts - j, 0, None) / (n - j)
        out[f"R@{k}_chance"] = float(np.mean(1.0 - miss))
    return out


def retrieval_during_training(setup, params, source, config, assets) -> dict:
    """R@K on the held-out split for every ordered pair of configured modalities that the split
    holds together (e.g. image->text, audio->text, smell->text), as eval/... metrics."""
    names = list(config.modalities.keys())
    embedded = embed_all(setup, params, source, config, assets, names, config.eval.max_examples)
    results = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            metrics = retrieval_scores(*embedded[a], *embedded[b], b)
            if metrics.pop("n") == 0:
                continue
            for key, value in metrics.items():
                results[f"eval/retrieval/{a}->{b}/{key}"] = value
    return results


# ==============================================================================================
# Zero-shot classification with prompt templates
# ==============================================================================================

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


def _labelled(z, records):
    rows = [i for i, r in enumerate(records) if r.get("label")]
    return z[rows], [records[i]["label"] for i in rows]


def zeroshot(setup, params, source, config, assets, modality: str, template=DEFAULT_TEMPLATE,
             max_examples=None) -> dict:
    """Classify each example of `modality` by its most similar class embedding: the classes are the
    distinct labels of the split; `template` is one prompt template ("a photo of a {}") or a list
    of them (an ensemble: the class embedding is the normalised mean of its prompts' embeddings)."""
    _check_modality(config, modality)
    templates = templates_list(template)
    z, records = embed_records(setup, params, source, config, assets, modality, max_examples)
    z, labels = _labelled(z, records)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"zero-shot needs at least 2 distinct labels in the split, found {len(classes)}")
    class_z = class_embeddings(setup, params, config, assets, classes, templates)
    truth = np.array([classes.index(label) for label in labels])
    predicted = np.argmax(z @ class_z.T, axis=1)
    return {"accuracy": float(np.mean(predicted == truth)), "n": int(len(truth)), "classes": len(classes)}


class ListSource:
    """A list of records that reads like a dataset split."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]




# ==============================================================================================
# Linear probe
# ==============================================================================================

def validation_split(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, validation) index arrays over n training examples."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit_linear_probe(train_x, train_y, test_x, test_y, Cs=PROBE_CS, val_fraction: float = 0.2,
                     seed: int = 0) -> dict:
    """Multinomial logistic regression with an L2 penalty (scikit-learn, lbfgs) on fixed features.
    Each C of `Cs` (inverse regularisation strength) is fitted on the fit part of a deterministic
    split of the training examples and scored on its validation part; the best C (ties: the
    smallest, i.e. the strongest regularisation) is refitted on all training examples and scored on
    the test examples. Test labels unseen in training count as errors."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes = sorted(set(train_y.tolist()))
    if len(classes) < 2:
        raise ValueError(f"the linear probe needs at least 2 distinct labels in training, found {len(classes)}")
    if len(train_y) < 4:
        raise ValueError(f"the linear probe needs at least 4 labelled training examples, found {len(train_y)}")
    if len(test_y) == 0:
        raise ValueError("the linear probe has no labelled test examples")
    fit, val = validation_split(len(train_y), val_fraction, seed)

    def train(C, rows):
        model = LogisticRegression(C=C, max_iter=2000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(train_x[rows], train_y[rows])

    if len(set(train_y[fit].tolist())) < 2:
        raise ValueError("the fit part of the training examples holds a single label")
    validation = {}
    for C in Cs:
        validation[float(C)] = float(np.mean(train(C, fit).predict(train_x[val]) == train_y[val]))
    best = max(validation.values())
    chosen = min(C for C, acc in validation.items() if acc == best)
    model = train(chosen, np.arange(len(train_y)))
    accuracy = float(np.mean(model.predict(test_x) == test_y))
    return {"accuracy": accuracy, "n": int(len(test_y)), "classes": len(classes), "C": chosen,
            "val_accuracy": best, "n_train": int(len(fit)), "n_val": int(len(val)),
            "validation": {f"{C:g}": acc for C, acc in validation.items()}}


def linear_probe(setup, params, train_source, test_source, config, assets, modality: str,
                 max_train=None, max_test=None, Cs=PROBE_CS, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Linear probe on frozen `modality` embeddings: train on the labelled examples of
    train_source (C chosen on a deterministic validation split of them), test on test_source.
    -> {"accuracy", "n" (test examples), "classes", "C", ...} (see fit_linear_probe)."""
    _check_modality(config, modality)
    train_x, train_y = _labelled(*embed_records(setup, params, train_source, config, assets, modality, max_train))
    test_x, test_y = _labelled(*embed_records(setup, params, test_source, config, assets, modality, max_test))
    return fit_linear_probe(train_x, train_y, test_x, test_y, Cs, val_fraction, seed)


# ==============================================================================================
# Paired compositional test (Winoground form)
# ==============================================================================================

def winoground_scores(similarity: np.ndarray) -> dict:
    """similarity [G, 2, 2] with similarity[g, i, j] = s(caption_i, input_j) of group g (caption_i
    describes input_i). Thrush et al. 2022:
      text score:  for both inputs, the right caption is the more similar one
                   s(C0, I0) > s(C1, I0) and s(C1, I1) > s(C0, I1)
      image score: for both captions, the right input is the more similar one
                   s(C0, I0) > s(C0, I1) and s(C1, I1) > s(C1, I0)
      group score: both. Ties count as failures. Chance: 1/4, 1/4, 1/6."""
    s = np.asarray(similarity, np.float64)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"similarity must be [groups, 2, 2], got {s.shape}")
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    group = text & image
    n = len(s)
    mean = lambda x: float(np.mean(x)) if n else 0.0  # noqa: E731
    return {"text_score": mean(text), "image_score": mean(image), "group_score": mean(group), "n": int(n),
            "chance": dict(WINOGROUND_CHANCE)}


def read_pairs(path) -> tuple[str, list[dict]]:
    """Parse a pairs file (format in the module docstring) -> (modality, groups); each group is
    {"id", "caption_0", "caption_1", "input_0", "input_1", "source_0", "source_1"}. Errors name the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    root, modality, groups = path.parent, None, []
    for where, entry in json_lines(path):
        for key in ("caption_0", "caption_1"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{where}: '{key}' must be a non-empty string")
        others = sorted(set(entry) - {"id", "caption_0", "caption_1"})
        names = sorted({k[:-2] for k in others if k.endswith(("_0", "_1"))})
        if len(names) != 1 or others != [f"{names[0]}_0", f"{names[0]}_1"]:
            raise ValueError(f"{where}: besides id, caption_0 and caption_1 a line holds exactly two keys "
                             f"<modality>_0 and <modality>_1 (e.g. image_0, image_1); got {others}")
        name = names[0]
        if name == "text":
            raise ValueError(f"{where}: the paired inputs must be of a modality other than text")
        registry.get(name)
        if modality not in (None, name):
            raise ValueError(f"{where}: this line pairs captions with '{name}', earlier lines with '{modality}'")
        modality = name
        group = {"id": str(entry.get("id", f"line-{where.rsplit(':', 1)[1]}")),
                 "caption_0": entry["caption_0"], "caption_1": entry["caption_1"]}
        for i in (0, 1):
            value = entry[f"{name}_{i}"]
            if isinstance(value, str):
                file = root / value
                if not file.is_file():
                    raise ValueError(f"{where}: {name}_{i} file {file} does not exist")
                group[f"input_{i}"], group[f"source_{i}"] = file.read_bytes(), str(file)
            else:
                group[f"input_{i}"], group[f"source_{i}"] = value, where
        groups.append(group)
    if not groups:
        raise ValueError(f"{path}: the pairs file holds no groups")
    return modality, groups


def paired_compositional(setup, params, config, assets, pairs_path) -> dict:
    """Winoground-form scores of the run on the groups of a pairs file:
    {"text_score", "image_score", "group_score", "n", "chance", "modality"}."""
    modality, groups = read_pairs(pairs_path)
    _check_modality(config, "text")
    _check_modality(config, modality)
    captions = [{"id": f"{g['id']}/caption_{i}", "text": g[f"caption_{i}"]} for g in groups for i in (0, 1)]
    inputs = [{"id": f"{g['id']}/{modality}_{i}", modality: g[f"input_{i}"], "source": g[f"source_{i}"]}
              for g in groups for i in (0, 1)]
    zc, kept_c = embed_records(setup, params, ListSource(captions), config, assets, "text")
    zi, kept_i = embed_records(setup, params, ListSource(inputs), config, assets, modality)
    for wanted, kept in ((captions, kept_c), (inputs, kept_i)):
        if len(kept) != len(wanted):
            missing = sorted({r["id"] for r in wanted} - {r["id"] for r in kept})
            bad = next(r for r in wanted if r["id"] == missing[0])
            raise ValueError(f"{pairs_path}: cannot encode {bad.get('source') or bad['id']} ({len(missing)} failed)")
    zc = zc.reshape(len(groups), 2, -1)
    zi = zi.reshape(len(groups), 2, -1)
    similarity = np.einsum("gie,gje->gij", zc, zi)
    return {**winoground_scores(similarity), "modality": modality}


# ==============================================================================================
# Missing-modality robustness
# ==============================================================================================

def _fused_embed_fn(setup):
    """params, numpy batch (presence bits as given) -> [B, E]: one joint pass of the fused encoder
    over every modality whose `<name>/present` bit is on (absent ones are masked out of attention),
    then each present modality's CLS output through its own projection, L2-normalised; the example's
    embedding is the normalised mean of those. With exactly one modality present this equals its
    unimodal `Omni.embed` (absent tokens are invisible to attention)."""
    cache = setup.__dict__.setdefault("_embed_fns", {})
    if "<fused>" in cache:
        return cache["<fused>"]
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

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
    -> ({condition: [N, E]}, records). fusion="early": the joint pass (_fused_embed_fn);
    fusion="late": the normalised mean of the kept modalities' unimodal embeddings."""
    if fusion not in ("early", "late"):
        raise ValueError(f"fusion must be 'early' or 'late', got {fusion!r}")
    fused = _fused_embed_fn(setup) if fusion == "early" else None
    unimodal = {m: _embed_fn(setup, m) for m in modalities} if fusion == "late" else None
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
        _check_modality(config, name)
    _check_modality(config, "text")
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


# ==============================================================================================
# Results on disk, periodic evaluation during training
# ==============================================================================================

def write_result(workdir, name: str, result: dict, step=None) -> Path:
    """Write result (with "step" first when given) to WORKDIR/eval/<name>.json (process 0 only);
    returns the path. The name may only hold letters, digits, '.', '_', '-' (others become '_')."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "result"
    path = Path(workdir) / "eval" / f"{safe}.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"step": int(step), **result} if step is not None else result
        path.write_text(json.dumps(payload, indent=2))
    return path


def eval_tasks(config) -> list[str]:
    """config.eval.tasks ("retrieval,zeroshot,...", default "retrieval") -> checked task names.
    Call before training starts, so that a typo fails at once and not at the first evaluation."""
    section = config.get("eval") or {}
    raw = section.get("tasks", "retrieval") if hasattr(section, "get") else "retrieval"
    raw = ",".join(raw) if isinstance(raw, (list, tuple)) else str(raw or "")
    tasks = [t.strip() for t in raw.split(",") if t.strip()]
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"eval.tasks: unknown task '{task}' (known: {', '.join(TASKS)})")
    if "paired" in tasks:
        pairs = section.get("pairs", "")
        if not pairs:
            raise ValueError("eval.tasks names 'paired' but eval.pairs (a pairs .jsonl file) is empty")
        if not Path(pairs).is_file():
            raise ValueError(f"eval.pairs: {pairs} does not exist")
    return tasks


def _config_templates(config):
    raw = config.eval.get("templates", "") or ""
    return [t.strip() for t in raw.split("|") if t.strip()] or [DEFAULT_TEMPLATE]


def flatten(prefix: str, result: dict) -> dict[str, float]:
    """Numeric leaves of a result as "<prefix>/<key>[/<subkey>]" floats; counts (n, n_*, classes),
    chance levels and the probe's C and validation curve are left out."""
    skip = {"n", "classes", "chance", "C", "validation", "n_train", "n_val"}
    out = {}
    for key, value in result.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out.update(flatten(f"{prefix}/{key}", value))
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out


def _split(setup, data_dir, split):
    from omni.data.records import open_split, split_names
    cache = setup.__dict__.setdefault("_eval_sources", {})
    key = (str(data_dir), split)
    if key not in cache:
        cache[key] = open_split(data_dir, split) if split in split_names(data_dir) else None
    return cache[key]


def periodic_evaluations(setup, params, config, assets, data_dir) -> dict[str, float]:
    """Run every task of config.eval.tasks on config.eval.split (linear_probe also reads `train`)
    and return flat metrics, e.g. eval/retrieval/image->text/R@1, eval/zeroshot/image/accuracy,
    eval/linear_probe/image/accuracy, eval/paired/group_score, eval/robustness/accuracy/all.
    A task the data cannot support (fewer than 2 labels, a missing split) is skipped with a note
    on stderr. Optional config keys: eval.templates ("tpl {}|tpl2 {}"), eval.pairs (file),
    eval.probe_train_examples (default 10 x eval.max_examples)."""
    tasks = eval_tasks(config)
    split = config.eval.split
    source = _split(setup, data_dir, split)
    max_examples = config.eval.max_examples
    names = list(config.modalities.keys())
    non_text = [n for n in names if n != "text"]
    templates = _config_templates(config)
    results: dict[str, float] = {}

    def attempt(label, fn):
        try:
            return fn()
        except ValueError as e:
            _log(f"eval {label}: skipped ({e})")
            return None

    for task in tasks:
        if task == "paired":
            result = attempt("paired", lambda: paired_compositional(setup, params, config, assets, config.eval.pairs))
            if result:
                results.update(flatten("eval/paired", result))
            continue
        if source is None:
            _log(f"eval {task}: skipped (no '{split}' split in {data_dir})")
            continue
        if task == "retrieval":
            results.update(retrieval_during_training(setup, params, source, config, assets))
        elif task == "zeroshot":
            for m in non_text:
                result = attempt(f"zeroshot/{m}", lambda: zeroshot(setup, params, source, config, assets, m,
                                                                   templates, max_examples))
                if result:
                    results.update(flatten(f"eval/zeroshot/{m}", result))
        elif task == "linear_probe":
            train_source = _split(setup, data_dir, "train")
            if train_source is None:
                _log(f"eval linear_probe: skipped (no 'train' split in {data_dir})")
                continue
            cap = config.eval.get("probe_train_examples", None) or (10 * max_examples if max_examples else None)
            for m in non_text:
                result = attempt(f"linear_probe/{m}", lambda: linear_probe(
                    setup, params, train_source, source, config, assets, m, cap, max_examples))
                if result:
                    results.update(flatten(f"eval/linear_probe/{m}", result))
        elif task == "robustness":
            result = attempt("robustness", lambda: missing_modality(setup, params, source, config, assets, None,
                                                                    templates, "early", max_examples))
            if result:
                results.update(flatten("eval/robustness", result))
    return results


# ==============================================================================================
# Loading a run; glue for `omni eval ...`
# ==============================================================================================

def load_run(workdir: str | Path):
    """A finished (or running) workdir -> (config, setup, params, assets, step) of its newest checkpoint."""
    from omni import config as config_lib, parallel
    from omni.checkpoint import Checkpoints
    from omni.modalities.text import BPETokenizer
    from omni.train import build_setup

    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: not found; is {workdir} an omni workdir?")
    config = config_lib.from_json_file(config_path)
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1000, async_save=False)
    step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no complete checkpoint")
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        state = checkpoints.restore_state(step, setup.abstract_state)
    saved = checkpoints.restore_assets(step)
    assets = {**saved, "tokenizer": BPETokenizer.from_json(saved["tokenizer"])}
    checkpoints.close()
    return config, setup, state["params"], assets, step


def _open(config, data, split):
    from omni.data.records import open_split
    return open_split(data or pipeline.resolve_data_dir(config), split)


def cli_linear_probe(workdir, data=None, modality="image", train_split="train", split="test",
                     max_examples=None, max_train=None, run=None) -> dict:
    """`omni eval linear_probe --workdir DIR [--data DIR] --modality M [--train-split train]
    [--split test]`: writes WORKDIR/eval/linear_probe-<split>-<modality>.json, returns the result.
    `run` = an already loaded load_run(workdir) tuple (tests)."""
    config, setup, params, assets, step = run or load_run(workdir)
    train_source, test_source = _open(config, data, train_split), _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        result = linear_probe(setup, params, train_source, test_source, config, assets, modality,
                              max_train, max_examples)
    write_result(workdir, f"linear_probe-{split}-{modality}", result, step)
    return result


def cli_paired(workdir, pairs, run=None) -> dict:
    """`omni eval paired --workdir DIR --pairs FILE`: writes WORKDIR/eval/paired-<file stem>.json."""
    config, setup, params, assets, step = run or load_run(workdir)
    with jax.set_mesh(setup.mesh):
        result = paired_compositional(setup, params, config, assets, pairs)
    write_result(workdir, f"paired-{Path(pairs).stem}", result, step)
    return result


def cli_robustness(workdir, data=None, split="test", modalities=None, template=None, fusion="early",
                   max_examples=None, run=None) -> dict:
    """`omni eval robustness --workdir DIR [--data DIR] [--split test] [--modalities image,text]
    [--template T ...] [--fusion early|late]`: writes WORKDIR/eval/robustness-<split>-<fusion>.json."""
    config, setup, params, assets, step = run or load_run(workdir)
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",") if m.strip()]
    source = _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        result = missing_modality(setup, params, source, config, assets, modalities or None,
                                  template or DEFAULT_TEMPLATE, fusion, max_examples)
    write_result(workdir, f"robustness-{split}-{fusion}", result, step)
    return result


def cli_zeroshot(workdir, data=None, split="test", modality="image", template=None, max_examples=None,
                 run=None) -> dict:
    """`omni eval zeroshot` with one or several --template: writes WORKDIR/eval/zeroshot-<split>-<modality>.json."""
    config, setup, params, assets, step = run or load_run(workdir)
    source = _open(config, data, split)
    with jax.set_mesh(setup.mesh):
        result = zeroshot(setup, params, source, config, assets, modality, template or DEFAULT_TEMPLATE,
                          max_examples)
    write_result(workdir, f"zeroshot-{split}-{modality}", result, step)
    return result
