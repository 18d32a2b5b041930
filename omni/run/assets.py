"""The run's assets: the BPE tokenizer and each modality's fitted asset (e.g. the smell SVD basis).

They belong to the run, not to the machine: each comes from the newest checkpoint, else the
workdir, else the bundle named by init_from, else it is fitted on the training split by process 0
and broadcast, so every process of a multi-host run holds exactly the same vocabulary and bases.
"""
from __future__ import annotations

import json
import sys

import jax

from omni import storage
from omni.checkpoint import Checkpoints
from omni.data import pipeline
from omni.modalities import registry
from omni.modalities.text import BPETokenizer

ASSETS_FILE = "assets.json"  # fitted modality assets (JSON), in a workdir and in a bundle
ASSET_FIT_RECORDS = 200_000


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def load_or_train_tokenizer(config, workdir, checkpoints: Checkpoints | None, source) -> BPETokenizer:
    """The run's tokenizer: from the newest checkpoint, else workdir/tokenizer.json, else the
    bundle named by init_from, else trained on the training corpus by process 0 and broadcast,
    so every process of a multi-host run holds exactly the same vocabulary. workdir and
    init_from: local paths or gs:// / s3:// (omni.storage)."""
    if checkpoints is not None and checkpoints.latest_step() is not None:
        assets = checkpoints.restore_assets(checkpoints.latest_step())
        return BPETokenizer.from_json(assets["tokenizer"])
    path = storage.path(workdir) / "tokenizer.json"
    if path.exists():
        return BPETokenizer.from_json(path.read_text())
    if config.init_from:
        return BPETokenizer.from_json((storage.path(config.init_from) / "tokenizer.json").read_text())
    text = ""
    if jax.process_index() == 0:
        log("training the BPE tokenizer on the training corpus")
        tokenizer = BPETokenizer.train(pipeline.corpus_lines(source), config.modalities.text.vocab_size)
        text = tokenizer.to_json()
        storage.write_text_atomic(path, text)
    if jax.process_count() > 1:
        text = broadcast_text(text, "tokenizer")
    return BPETokenizer.from_json(text)


def load_or_fit_assets(config, workdir, checkpoints: Checkpoints | None, source) -> tuple[dict, dict]:
    """The run's assets -> (assets for the encoders, their JSON form saved with every checkpoint):
    the tokenizer, plus each modality's fitted asset (e.g. the smell SVD basis). Like the
    tokenizer, an asset comes from the newest checkpoint, else workdir/assets.json, else the
    bundle named by init_from, else it is fitted on the training split by process 0 and broadcast."""
    tokenizer = load_or_train_tokenizer(config, workdir, checkpoints, source)
    fitted = _load_or_fit_modality_assets(config, workdir, checkpoints, source)
    return {"tokenizer": tokenizer, **fitted}, {"tokenizer": tokenizer.to_json(), **fitted}


def _load_or_fit_modality_assets(config, workdir, checkpoints, source) -> dict:
    if checkpoints is not None and checkpoints.latest_step() is not None:
        saved = checkpoints.restore_assets(checkpoints.latest_step())
        return {k: v for k, v in saved.items() if k != "tokenizer"}
    workdir = storage.path(workdir)
    candidates = [workdir / ASSETS_FILE] + ([storage.path(config.init_from) / ASSETS_FILE] if config.init_from else [])
    for path in candidates:
        if path.exists():
            return json.loads(path.read_text())
    text = "{}"
    if jax.process_index() == 0:
        fitted = {}
        for name in config.modalities:
            # at most ASSET_FIT_RECORDS records: a basis needs a sample, not a web-scale pass
            values = (source[i].get(name) for i in range(min(len(source), ASSET_FIT_RECORDS)))
            asset = registry.get(name).fit_asset((v for v in values if v), config)
            if asset is not None:
                log(f"fitted the {name} asset on the training split")
                fitted[name] = asset
        text = json.dumps(fitted)
        storage.write_text_atomic(workdir / ASSETS_FILE, text)
    if jax.process_count() > 1:
        text = broadcast_text(text, "assets")
    return json.loads(text)


def broadcast_text(text: str, key: str) -> str:
    """Process 0's string, on every process, through the coordination service's key-value store:
    the other processes wait as long as process 0 needs (training a tokenizer on a big corpus can
    take minutes), where a collective would give up (XLA CPU's Gloo context after 30 s). Sent in
    chunks below gRPC's message limit (an SVD basis is megabytes of JSON)."""
    from jax._src import distributed  # the client jax.distributed.initialize made
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("several processes but no jax.distributed client: call jax.distributed.initialize")
    prefix = f"omni/broadcast/{key}"
    if jax.process_index() == 0:
        data = text.encode()
        chunks = [data[i:i + BROADCAST_CHUNK] for i in range(0, len(data), BROADCAST_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            client.key_value_set_bytes(f"{prefix}/{i}", chunk)
        client.key_value_set(f"{prefix}/count", str(len(chunks)))
        return text
    count = int(client.blocking_key_value_get(f"{prefix}/count", BROADCAST_TIMEOUT_MS))
    return b"".join(client.blocking_key_value_get_bytes(f"{prefix}/{i}", BROADCAST_TIMEOUT_MS)
                    for i in range(count)).decode()


BROADCAST_CHUNK = 1 << 20
BROADCAST_TIMEOUT_MS = 60 * 60 * 1000
