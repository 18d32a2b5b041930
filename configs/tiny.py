"""The CPU-sized default: text + image on the embedded default dataset, ~15 min on 2 cores.

Run:  omni train --config configs/tiny.py --workdir runs/tiny
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.init_from = ""

    c.train = ml_collections.ConfigDict(dict(
        steps=600, batch_size=64, seed=0,
        log_every=50, eval_every=300, checkpoint_every=300, keep_checkpoints=2,
        lr=2e-3, warmup_steps=60, min_lr_ratio=0.05, weight_decay=0.05, grad_clip=1.0,
        b1=0.9, b2=0.98, max_bad_steps=0,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.model = ml_collections.ConfigDict(dict(
        width=128, depth=4, heads=4, mlp_ratio=4, embed_dim=128,
        dtype="float32",       # compute dtype of matmuls; parameters stay f32
        remat="none",          # none | full | dots
        attention="einsum",    # einsum (written out) | fused (jax.nn.dot_product_attention: cuDNN on GPU)
        scan_layers=True,
        parametrization="sp",  # sp (standard) | mup (maximal update: LR transfers across widths)
        mup_base_width=128,    # under mup, the width at which it equals sp
    ))
    c.modalities = ml_collections.ConfigDict(dict(
        text=ml_collections.ConfigDict(dict(max_len=24, vocab_size=1024)),
        image=ml_collections.ConfigDict(dict(size=32, patch=8)),
    ))
    c.loss = ml_collections.ConfigDict(dict(
        mlm=ml_collections.ConfigDict(dict(weight=0.5, mask_rate=0.15)),
        mim=ml_collections.ConfigDict(dict(weight=0.5, mask_ratio=0.75)),
        mmm=ml_collections.ConfigDict(dict(weight=0.5)),
        contrastive=ml_collections.ConfigDict(dict(weight=1.0, kind="siglip")),
    ))
    c.data = ml_collections.ConfigDict(dict(
        path="",                 # empty = the embedded default dataset
        modality_dropout=0.1,    # chance that a multimodal training example keeps only one modality
        on_error="skip",         # skip (count, log path and reason) | raise
        num_threads=2, prefetch=4,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        split="test", batch_size=128, max_examples=1000,
        tasks="retrieval",        # run every train.eval_every: retrieval,zeroshot,linear_probe,paired,robustness
        templates="",             # zero-shot prompts, '|'-separated; empty = "a photo of a {}"
        pairs="",                 # pairs .jsonl for the "paired" task
        probe_train_examples=0,   # 0 = 10 x eval.max_examples training examples for the probe
    ))
    return c
