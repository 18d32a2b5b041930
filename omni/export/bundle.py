"""Bundles: a trained run as a folder anyone can use, and `omni embed` on top of it.

`omni export --workdir DIR --out BUNDLE` writes (no pickle anywhere):

    weights.safetensors      every parameter, flat keys like "stems/text/tokens" (f32)
    config.json              the run's config, as the run wrote it
    tokenizer.json           the BPE tokenizer (HF `tokenizers` JSON) of the checkpoint
    assets.json              the run's fitted modality assets (e.g. the smell SVD basis), JSON
    preprocessing.json       every host preprocessing constant, per modality: text max_len and
                             special token ids; image size, patch, pixel mean/std; and the exact
                             arrays each program takes (name, shape with "b" for the batch, dtype)
    bundle.json              format version, step, modalities, embedding width, and per program:
                             file, platforms, inputs, output, and its flat argument order
    match_<a>-<b>.stablehlo  for a run trained with matching (loss.itm.weight > 0), one program
                             per trained pair: (weights, a's and b's inputs) -> logits [b]
    encoder_<modality>.stablehlo
                             one program per modality encoder, made with `jax.export` for
                             platforms ("cpu", "cuda") with a symbolic batch dimension "b", stored as
                             `Exported.serialize()` bytes (load with `jax.export.deserialize`)
    manifest.json            the SHA-256 (and size) of every other file

Program calling convention: `program(weights, inputs) -> [b, embed_dim] f32`, L2-normalised, where
`weights` is the dict of ALL tensors in weights.safetensors (keyed as there) and `inputs` is the
modality's dict of arrays (e.g. {"text/ids": int32 [b, max_len]}); flattened, the arguments are
the weights in sorted key order, then the inputs in sorted key order (bundle.json lists them).
The weights are arguments, not constants baked into the program, because:
  * the programs stay small whatever the model size (StableHLO constants would copy every weight
    into every modality's program, and serialized modules over 2 GiB cannot be written at all);
  * weights.safetensors is the single source of truth: `omni embed` and fine-tuning
    (`--config.init_from=BUNDLE`) use the very same bytes, checked against the manifest.

`load_bundle` refuses a bundle whose files do not match manifest.json (a changed, missing or
unlisted file) with a ValueError naming the file. `embed_files` runs the programs with nothing
but the bundle: host preprocessing (BPE tokenizer from tokenizer.json, `load_image`) with the
bundle's constants, then `jax.export.deserialize(...).call`; no flax module is built and no
training code is imported. Batches are cut into chunks of at most `batch_size` and each chunk is
padded to the next power of two (so at most log2(batch_size)+1 compilations per program).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni import storage
from omni.export.weights import write_safetensors
from omni.matching import itm_pairs, matching_logits
from omni.modalities import image, registry, text
from omni.run.bundle import (ASSETS, BUNDLE_FORMAT, CONFIG, DEFAULT_PLATFORMS, MANIFEST, METADATA, PREPROCESSING,
                             TOKENIZER, WEIGHTS, BATCH_DIM, flat_leaves, program_file, sha256_of_file,
                             unflatten_like)
from omni.run.load import opened_run

# Export reads the checkpoint this many bytes of params at a time (host numpy, never a device):
# the host holds one group, not the model. Small groups cost one orbax restore call each.
READ_GROUP_BYTES = 32 << 20


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name

def preprocessing_constants(config) -> dict:
    """Every host preprocessing constant a consumer needs to build a program's inputs."""

    out: dict = {}
    for name in config.modalities:
        modality = registry.get(name)
        entry: dict = {}
        if name == "text":
            entry = {
                "tokenizer": TOKENIZER, "max_len": int(config.modalities.text.max_len),
                "vocab_size": int(config.modalities.text.vocab_size),
                "pad_id": text.PAD_ID, "cls_id": text.CLS_ID, "mask_id": text.MASK_ID, "unk_id": text.UNK_ID,
                "special_tokens": list(text.SPECIAL_TOKENS),
                "recipe": "ids = tokenizer.encode(text) (byte-level BPE, no special tokens added); keep the "
                          "first max_len ids; pad on the right with pad_id to max_len",
            }
        elif name == "image":
            entry = {
                "size": int(config.modalities.image.size), "patch": int(config.modalities.image.patch),
                "pixel_mean": float(image.PIXEL_MEAN), "pixel_std": float(image.PIXEL_STD),
                "recipe": "decode; 16-bit -> 8-bit; alpha composited on white; RGB; resize (bilinear) so "
                          "the longer side is size, aspect kept; pad bottom/right with 0 to size x size; "
                          "uint8 into the program, which computes ((x / 255) - pixel_mean) / pixel_std "
                          "per channel before cutting patch x patch patches (row-major)",
            }
        elif hasattr(modality, "export_constants"):  # later modalities describe themselves
            entry = dict(modality.export_constants(config))
        entry["inputs"] = {key: {"shape": [BATCH_DIM, *map(int, shape)], "dtype": _dtype_name(dtype)}
                           for key, (shape, dtype) in modality.array_spec(config).items()}
        out[name] = entry
    return out


def export_programs(config, graphdef, like_params, weights: dict,
                    platforms=DEFAULT_PLATFORMS) -> dict[str, tuple[bytes, dict]]:
    """modality -> (serialized jax.export program, its description for bundle.json). like_params
    gives the structure only and weights the shapes and dtypes only: no value is read."""
    batch, = jax.export.symbolic_shape(BATCH_DIM)
    weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
    out = {}
    for name in config.modalities:
        spec = registry.get(name).array_spec(config)
        input_specs = {k: jax.ShapeDtypeStruct((batch, *shape), dtype) for k, (shape, dtype) in spec.items()}

        def encoder(weights_arg, inputs, name=name):
            nested = unflatten_like(weights_arg, like_params)  # like_params: structure only
            return nnx.merge(graphdef, nested).embed(name, inputs)

        exported = jax.export.export(jax.jit(encoder), platforms=tuple(platforms))(weight_specs, input_specs)
        paths, _ = jax.tree_util.tree_flatten_with_path((weight_specs, input_specs))
        order = [("weights" if p[0].idx == 0 else "inputs", p[1].key) for p, _ in paths]
        out_aval = exported.out_avals[0]
        description = {
            "file": program_file(name),
            "platforms": list(exported.platforms),
            "calling_convention_version": int(exported.calling_convention_version),
            "inputs": {k: {"shape": [BATCH_DIM, *map(int, shape)], "dtype": _dtype_name(dtype)}
                       for k, (shape, dtype) in spec.items()},
            "output": {"shape": [str(d) for d in out_aval.shape], "dtype": _dtype_name(out_aval.dtype),
                       "l2_normalised": True},
            "arguments": [{"group": group, "name": key} for group, key in order],
        }
        out[name] = (bytes(exported.serialize()), description)
    if "itm_head" in like_params:
        out.update(export_matching_programs(config, graphdef, like_params, weight_specs, batch, platforms))
    return out


def export_matching_programs(config, graphdef, like_params, weight_specs, batch, platforms) -> dict:
    """"match:<a>-<b>" -> one program per trained pair: (weights, a's and b's inputs) -> matching
    logits [b] (omni.matching.matching_logits; sigmoid gives the probability that they belong together)."""
    out = {}
    for a, b in itm_pairs(config, list(config.modalities.keys())):
        spec = {**registry.get(a).array_spec(config), **registry.get(b).array_spec(config)}
        input_specs = {k: jax.ShapeDtypeStruct((batch, *shape), dtype) for k, (shape, dtype) in spec.items()}

        def match(weights_arg, inputs, a=a, b=b):
            model = nnx.merge(graphdef, unflatten_like(weights_arg, like_params))
            present = jnp.ones(inputs[next(iter(inputs))].shape[0], bool)
            return matching_logits(model, a, (*model.stems[a].embed(inputs, model.dtype), present),
                                   b, (*model.stems[b].embed(inputs, model.dtype), present))

        exported = jax.export.export(jax.jit(match), platforms=tuple(platforms))(weight_specs, input_specs)
        paths, _ = jax.tree_util.tree_flatten_with_path((weight_specs, input_specs))
        out[f"match:{a}-{b}"] = (bytes(exported.serialize()), {
            "file": f"match_{a}-{b}.stablehlo", "pair": [a, b],
            "platforms": list(exported.platforms),
            "calling_convention_version": int(exported.calling_convention_version),
            "inputs": {k: {"shape": [BATCH_DIM, *map(int, shape)], "dtype": _dtype_name(dtype)}
                       for k, (shape, dtype) in spec.items()},
            "output": {"shape": [BATCH_DIM], "dtype": "float32", "meaning": "matching logit"},
            "arguments": [{"group": "weights" if p[0].idx == 0 else "inputs", "name": p[1].key} for p, _ in paths],
        })
    return out


def export_bundle(workdir, out_dir, platforms=DEFAULT_PLATFORMS) -> dict:
    """The newest checkpoint of the run in `workdir` -> a bundle folder at `out_dir` (which must
    not exist or be empty). Either may be local, gs:// or s3:// (omni.storage). Returns a summary
    (bundle path, step, modalities, platforms, file sizes).

    Only the params are read, never the optimizer state, a group of at most READ_GROUP_BYTES at
    a time straight into host arrays (omni.run.load.OpenedRun.param_groups), and each group is
    written to weights.safetensors and dropped (omni.export.weights): the host never holds the
    model, and no device holds any of it. A local bundle is written to a temporary sibling
    and renamed into place; one on an object store is written to a local temporary folder and
    uploaded with manifest.json last, so a reader that finds the manifest finds every file."""
    workdir, out_dir = storage.path(workdir), storage.path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: already exists and is not an empty folder; choose a new --out")
    with opened_run(workdir) as run:
        return _write_bundle(run, workdir, out_dir, platforms)


def _write_bundle(run, workdir, out_dir, platforms) -> dict:
    config, step, assets = run.config, run.step, run.assets
    weights = flat_leaves(run.abstract_params)  # shapes and dtypes: the values come in groups
    for key, value in weights.items():
        if value.dtype != np.float32:
            raise ValueError(f"parameter '{key}' is {value.dtype}; bundles store float32 weights")
    programs = export_programs(config, run.setup.graphdef, run.abstract_params, weights, platforms)

    remote = storage.is_remote(out_dir)
    if remote:
        tmp = Path(tempfile.mkdtemp(prefix="omni-bundle-"))
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    try:
        with open(tmp / WEIGHTS, "wb") as f:
            write_safetensors(f, weights, metadata={"format": BUNDLE_FORMAT, "step": str(step)},
                              groups=run.param_groups(READ_GROUP_BYTES))
        (tmp / CONFIG).write_bytes((workdir / "config.json").read_bytes())
        (tmp / TOKENIZER).write_text(assets["tokenizer"].to_json(), encoding="utf-8")
        fitted = {k: v for k, v in assets.items() if k != "tokenizer"}
        (tmp / ASSETS).write_text(json.dumps(fitted) + "\n", encoding="utf-8")
        (tmp / PREPROCESSING).write_text(json.dumps(preprocessing_constants(config), indent=2) + "\n")
        for serialized, description in programs.values():
            (tmp / description["file"]).write_bytes(serialized)
        metadata = {
            "format": BUNDLE_FORMAT, "step": int(step), "modalities": list(config.modalities.keys()),
            "embed_dim": int(config.model.embed_dim), "weights": WEIGHTS, "config": CONFIG,
            "tokenizer": TOKENIZER, "preprocessing": PREPROCESSING, "jax_version": jax.__version__,
            "programs": {name: description for name, (_, description) in programs.items()},
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        files = {p.name: {"sha256": sha256_of_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {"format": BUNDLE_FORMAT, "algorithm": "sha256", "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if remote:
            storage.copy_folder(tmp, out_dir, last=MANIFEST)
            shutil.rmtree(tmp)
        else:
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above)
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bundle": str(out_dir), "step": int(step), "modalities": metadata["modalities"],
            "platforms": list(platforms), "files": {name: f["bytes"] for name, f in files.items()}}
