"""~110M-parameter model of all five modalities (ViT-B width, 12 layers, 32k BPE) for accelerators:
224 px images, 10 s audio clips (128 tokens), 8 key frames of 112 px video, smells in 8 tokens.

Run:  omni train --config configs/base.py --workdir runs/base
"""
from pathlib import Path

from omni.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("tiny.py")))
    c.name = "base"
    c.train.update(dict(steps=100_000, batch_size=256, lr=1e-3, warmup_steps=2000,
                        log_every=100, eval_every=5000, checkpoint_every=2000, keep_checkpoints=3))
    c.model.update(dict(width=768, depth=12, heads=12, mlp_ratio=4, embed_dim=512,
                        dtype="bfloat16", remat="dots", attention="fused"))
    c.modalities.text.update(dict(max_len=64, vocab_size=32768))
    c.modalities.image.update(dict(size=224, patch=16))
    c.modalities.audio.update(dict(clip_seconds=10.24, patch_frames=4))
    c.modalities.video.update(dict(size=112, patch=16, num_frames=8))
    c.modalities.smell.update(dict(svd_dim=256, tokens=8))
    # SigLIP, as this config and gpu_1b.py were measured; tiny.py's InfoNCE was chosen at batch 64
    c.loss.contrastive.kind = "siglip"
    return c
