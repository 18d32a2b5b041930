"""Text: byte-level BPE (HF tokenizers) on the host, token + position embeddings in the model,
masked language modelling (BERT's 15%, 80/10/10) as its masked objective."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from omni.errors import ConfigError
from omni import mup
from omni.modalities.base import Modality, row_keys, row_uniform
from omni.nn import LayerNorm, matmul, param

PAD_ID, CLS_ID, MASK_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[MASK]", "[UNK]"]


class BPETokenizer:
    """Byte-level BPE: any UTF-8 string encodes, and decode(encode(s)) == s."""

    def __init__(self, tokenizer: Tokenizer | None = None):
        self._tok = tokenizer

    @classmethod
    def train(cls, lines, vocab_size: int) -> "BPETokenizer":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(lines, trainer)
        return cls(tok)

    def _require(self):
        if self._tok is None:
            raise RuntimeError("BPETokenizer is empty: call BPETokenizer.train(...) or BPETokenizer.load(path)")
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._require().encode(text).ids

    def decode(self, ids) -> str:
        return self._require().decode([int(i) for i in ids if int(i) != PAD_ID], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._require().get_vocab_size()

    def to_json(self) -> str:
        return self._require().to_str()

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        return cls(Tokenizer.from_str(text))

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, json.JSONDecodeError, Exception) as e:  # tokenizers raises a bare Exception
            raise ValueError(f"cannot load tokenizer from {path}: {e}") from None


def encode_padded(tokenizer: BPETokenizer, text: str, max_len: int) -> np.ndarray:
    ids = tokenizer.encode(text)[:max_len]
    out = np.full((max_len,), PAD_ID, np.int32)
    out[: len(ids)] = ids
    return out


class TextStem(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        cfg = config.modalities.text
        width = config.model.width
        self.vocab_size = cfg.vocab_size
        self.mask_rate = float(config.loss.mlm.mask_rate)
        self.tokens = param(rngs, (cfg.vocab_size, width), ("vocab", "embed"))
        self.positions = param(rngs, (cfg.max_len, width), ("length", "embed"))
        self.head_norm = LayerNorm(rngs, width)
        self.head_bias = param(rngs, (cfg.vocab_size,), ("vocab",), init="zeros")
        self.output_multiplier = mup.output_multiplier(config)

    def embed(self, inputs, dtype):
        ids = inputs["text/ids"]
        return self._embed_ids(ids), ids != PAD_ID

    def _embed_ids(self, ids):
        return jnp.take(self.tokens[...], ids, axis=0) + self.positions[...][None, : ids.shape[1]]

    def masked_embed(self, inputs, rng, dtype):
        """BERT masking: pick mask_rate of real tokens; 80% -> [MASK], 10% -> random, 10% kept."""
        ids = inputs["text/ids"]
        valid = ids != PAD_ID
        keys = jax.vmap(lambda key: jax.random.split(key, 3))(row_keys(rng, ids.shape[0]))  # [B, 3]
        picked = valid & (row_uniform(keys[:, 0], ids.shape) < self.mask_rate)
        kind = row_uniform(keys[:, 1], ids.shape)
        random_ids = jax.vmap(lambda key: jax.random.randint(key, ids.shape[1:], len(SPECIAL_TOKENS),
                                                             self.vocab_size))(keys[:, 2])
        corrupted = jnp.where(picked & (kind < 0.8), MASK_ID, ids)
        corrupted = jnp.where(picked & (kind >= 0.8) & (kind < 0.9), random_ids, corrupted)
        return self._embed_ids(corrupted), valid, ids, picked.astype(jnp.float32)

    def reconstruction_loss(self, hidden, target, dtype):
        """Cross-entropy per position; the output layer is tied to the token embedding. Its logits
        are f32 on every backend: bf16 keeps 8 significant bits of each of the vocabulary's logits."""
        h = self.head_norm(hidden)
        logits = matmul(h, self.tokens[...], dtype, "bld,vd->blv", f32_out=True)
        logits = logits * self.output_multiplier + self.head_bias[...]
        logz = jax.nn.logsumexp(logits, axis=-1)
        true_logit = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
        return logz - true_logit


class Text(Modality):
    name = "text"
    objective = "mlm"

    def validate(self, config):
        cfg = config.modalities.text
        if cfg.max_len < 1:
            raise ConfigError(f"modalities.text.max_len={cfg.max_len} must be at least 1")
        if cfg.vocab_size <= len(SPECIAL_TOKENS) + 256:
            raise ConfigError(
                f"modalities.text.vocab_size={cfg.vocab_size} must exceed {len(SPECIAL_TOKENS) + 256} "
                "(special tokens + the 256 byte symbols)")

    def num_tokens(self, config):
        return config.modalities.text.max_len

    def array_spec(self, config):
        return {"text/ids": ((config.modalities.text.max_len,), np.int32)}

    def stem_flops(self, config):
        # embedding lookup is free; the head is the (tied) output layer over the vocabulary
        return 0.0, 2 * self.num_tokens(config) * config.model.width * config.modalities.text.vocab_size

    def prepare(self, value, root):
        if not isinstance(value, str) or not value:
            raise ValueError("'text' must be a non-empty string")
        return value

    def encode(self, value, config, assets):
        if not isinstance(value, str):
            raise ValueError(f"text must be a string, got {type(value).__name__}")
        return {"text/ids": encode_padded(assets["tokenizer"], value, config.modalities.text.max_len)}

    def make_stem(self, config, rngs, built=None):
        return TextStem(config, rngs)
