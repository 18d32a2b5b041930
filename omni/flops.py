"""FLOPs: the model's analytic training FLOPs per step, and the device's measured matmul peak,
the two halves of MFU (model FLOPs utilisation). Used by the trainer's logs and by `omni bench`."""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

from omni.modalities import registry


def model_flops_per_step(config) -> float:
    """Analytic training FLOPs per step = 3 x forward (backward costs twice the forward).

    Forward per layer, for a sequence of T tokens of width D, MLP width F = mlp_ratio*D:
      projections 2*T*(4*D^2) (q, k, v, out) + MLP 2*T*(2*D*F) + attention scores and mixing 2*2*T^2*D.
    The step runs the transformer once per modality on its own tokens (unimodal pass, when the
    contrastive loss is on) and once on their concatenation (fused pass, when a masked objective
    is on); plus each modality's stem (in every pass) and reconstruction head (`stem_flops`: e.g.
    the image patch projection and pixel head, the text output layer), and the contrastive
    projections. With matching (loss.itm), three fused passes per trained pair on loss.itm.rows rows
    of the batch (omni.matching).
    """
    m = config.model
    width, hidden = m.width, m.width * m.mlp_ratio
    lengths = {n: registry.get(n).num_tokens(config) + 1 for n in config.modalities}
    stems = {n: registry.get(n).stem_flops(config) for n in config.modalities}

    def transformer(tokens):
        per_layer = 2 * tokens * (4 * width ** 2 + 2 * width * hidden) + 4 * tokens ** 2 * width
        return m.depth * per_layer

    weights = registry.active_objectives(config)
    contrastive = "contrastive" in weights
    masked = any(name not in ("contrastive", "itm") for name in weights)
    forward = 0.0
    if contrastive:  # the unimodal pass, one per modality, and the projections
        forward += sum(transformer(t) for t in lengths.values()) + 2 * len(lengths) * width * m.embed_dim
        forward += sum(embed for embed, _ in stems.values())
    if masked:  # the fused pass and the reconstruction heads
        forward += transformer(sum(lengths.values()))
        forward += sum(embed + head for embed, head in stems.values())
    matched = 0.0
    if "itm" in weights:  # per pair: the positive and two hard-negative fused passes, and the head,
        # on loss.itm.rows rows of the batch (all of it when 0)
        pairs = registry.itm_pairs(config, list(config.modalities.keys()))
        matched = sum(3 * (transformer(lengths[a] + lengths[b]) + 2 * width) for a, b in pairs)
        if not contrastive:  # the embeddings the negatives are mined from
            forward += sum(transformer(t) for t in lengths.values()) + 2 * len(lengths) * width * m.embed_dim
        used = {n for pair in pairs for n in pair}
        forward += sum(stems[n][0] for n in used)  # the matching passes' clean tokens
    batch = config.train.batch_size
    matched_rows = int(config.loss.get("itm", {}).get("rows", 0)) or batch
    return 3.0 * (forward * batch + matched * matched_rows)


def measure_peak_flops(dtype: str, size: int | None = None, repeats: int = 10,
                       warmup_s: float = 2.0, cpu_measure_s: float = 2.0) -> float:
    """FLOP/s of a large matmul in the compute dtype (bf16 inputs accumulate in f32), best of N.

    The operands are random: constant ones or zeros can run faster on a GPU than real data does.
    2048^3 saturates a CPU; accelerators need 8192^3 to reach their peak, and such a product takes
    only milliseconds there, so each timing covers 20 back-to-back calls (one call's dispatch and
    sync would otherwise count against the peak and flatter the MFU). The products first run for
    `warmup_s`, because a CPU's first timings in a process run below its later ones, and a CPU
    keeps timing for `cpu_measure_s`. docs/performance.md says how much the peak varies."""
    on_cpu = jax.devices()[0].platform == "cpu"
    size = size or (2048 if on_cpu else 8192)
    calls = 1 if on_cpu else 20
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(1), (size, size), dt)
    b = jax.random.normal(jax.random.key(2), (size, size), dt)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        f(a, b).block_until_ready()
    best = math.inf
    timings, measure_until = 0, time.perf_counter() + (cpu_measure_s if on_cpu else 0.0)
    while timings < repeats or time.perf_counter() < measure_until:
        timings += 1
        t0 = time.perf_counter()
        for _ in range(calls):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / calls)
    return 2 * size ** 3 / best


def tokens_per_step(config) -> int:
    return config.train.batch_size * sum(registry.get(n).num_tokens(config) for n in config.modalities)
