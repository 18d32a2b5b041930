"""The CPU-sized default: all five modalities (text, image, audio, video, smell) on the embedded
default dataset, ~15 min on 2 cores. Objectives: the five masked ones (mlm, mim, mam, mvm, msm),
masked multimodal modelling (mmm) and an InfoNCE contrastive loss.

Run:  omni train --config configs/tiny.py --workdir runs/tiny
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.init_from = ""

    c.train = ml_collections.ConfigDict(dict(
        # 1200 steps: twice the examples of the 600 that the padded layout trained, in less wall
        # time (10.3 min here), since a step pays only for the modalities its rows hold
        steps=1200, batch_size=64, seed=0,
        log_every=50, eval_every=600, checkpoint_every=600, keep_checkpoints=2,
        lr=2e-3, warmup_steps=60, min_lr_ratio=0.05, weight_decay=0.05, grad_clip=1.0,
        b1=0.9, b2=0.98,
        # under muP, a hidden matrix decays by lr * weight_decay per step at every width, as in the
        # mup package's MuAdamW ("with_lr": by that over the width multiplier; omni/run/setup.py)
        mup_decay="width_independent",
        max_bad_steps=10,  # stop after this many consecutive non-finite steps (0 = never)
        # FLOP/s of one device for the logged MFU: 0 = measure a matmul at the start of the run;
        # or the accelerator's spec sheet figure (e.g. 989e12 for an H100's dense bf16)
        peak_flops_per_device=0.0,
    ))
    # data x fsdp x tensor = the devices (-1: the rest). dcn_data / dcn_fsdp: how many of the data /
    # fsdp positions lie across processes (nodes) or TPU slices, on the slow network; the rest stay
    # within one (NVLink, ICI). allow_replication: let a parameter whose dimension does not divide
    # its mesh axes be copied on every device of them (listed with its bytes); off: refused.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                            allow_replication=False))

    c.model = ml_collections.ConfigDict(dict(
        width=128, depth=4, heads=4, mlp_ratio=4, embed_dim=128,
        dtype="float32",       # compute dtype of matmuls; parameters stay f32
        residual_dtype="float32",  # dtype of the residual stream between layers (bfloat16 halves its traffic)
        remat="none",          # none | full | dots
        # einsum (written out) | blocked (per example and head, in blocks of queries) | xla | cudnn
        # (jax.nn.dot_product_attention with that implementation) | fused (the fastest measured:
        # cudnn on a GPU; on a CPU blocked for long sequences, einsum for short ones)
        attention="einsum",
        scan_layers=True,
        # image and video position tables start at normal (std 0.02, as ViT) or sincos (MAE's
        # fixed 2-D table, size ~1); sincos did not teach the default run the place (docs/evaluation.md)
        position_init="normal", position_std=0.02,
        parametrization="sp",  # sp (standard) | mup (maximal update: LR transfers across widths)
        mup_base_width=128,    # under mup, the width at which it equals sp
        # MAE's visible-only encoder (He et al. 2022; omni/mae.py) for images and video: the fused
        # pass sees only their visible patches, and a light decoder (decoder_depth layers of
        # decoder_width, 0 = the model width; 64 = half of tiny's) reconstructs the masked ones
        # from mask tokens. Off: masked patches become a mask token in the encoder (FLAVA/BEiT).
        mae=False, decoder_depth=1, decoder_width=64,
        # The token rows that layer norms, projections and MLP compute on, as a share of the
        # step's token slots (omni/transformer.py): each batch shard's valid tokens, packed
        # first. A step whose valid tokens do not fit runs every slot (the same result, slower).
        # 0 = measured on the run's first batches (omni/run/capacity.py); 1 = off.
        token_capacity=0.0,
    ))
    c.modalities = ml_collections.ConfigDict(dict(
        text=ml_collections.ConfigDict(dict(max_len=24, vocab_size=1024)),
        image=ml_collections.ConfigDict(dict(size=32, patch=8)),
        # 16 kHz mono clips of clip_seconds; log-mel (Whisper recipe) on device; a token is
        # patch_frames conv frames (conv stride 2), so tokens = clip frames / (2 * patch_frames).
        audio=ml_collections.ConfigDict(dict(clip_seconds=1.28, n_mels=80, patch_frames=4)),
        # num_frames frames per clip (PyAV), each size x size through the image patchifier.
        video=ml_collections.ConfigDict(dict(size=16, patch=8, num_frames=4, strategy="keyframes")),
        # a bag of compounds -> one vector (Morgan fingerprints summed by weight, SVD-reduced to
        # svd_dim fitted on the training split; or 'receptors': Hallem & Carlson responses) -> tokens.
        smell=ml_collections.ConfigDict(dict(representation="morgan", fingerprint_bits=2048, radius=2,
                                             svd_dim=64, tokens=4)),
    ))
    c.loss = ml_collections.ConfigDict(dict(
        mlm=ml_collections.ConfigDict(dict(weight=0.5, mask_rate=0.15)),
        mim=ml_collections.ConfigDict(dict(weight=0.5, mask_ratio=0.75)),
        mam=ml_collections.ConfigDict(dict(weight=0.5, mask_ratio=0.5, span=2)),  # masked audio (spans of tokens)
        mvm=ml_collections.ConfigDict(dict(weight=0.5, mask_ratio=0.75)),         # masked video frame patches
        msm=ml_collections.ConfigDict(dict(weight=0.5, mask_ratio=0.5)),          # masked smell
        mmm=ml_collections.ConfigDict(dict(weight=0.5)),
        # InfoNCE, not SigLIP: with SigLIP the embeddings of one voice fell onto one point whatever
        # digit it said, and audio <-> text stayed near chance; InfoNCE took audio -> text R@1 from
        # 0.035 to 0.485 in the same run (docs/evaluation.md). configs/base.py keeps SigLIP.
        contrastive=ml_collections.ConfigDict(dict(weight=1.0, kind="infonce")),
        # matching with hard negatives (omni/matching.py); pairs: "image-text,..." or "" = every pair;
        # rows: each pair's co-occurring rows scored per step (0 = the whole batch). Off by default:
        # with rows=16 a step took 1.33x as long (past the 15 minutes), and re-ranking stayed near
        # the contrastive ranking: the head did not learn the place or the digit (docs/evaluation.md).
        itm=ml_collections.ConfigDict(dict(weight=0.0, pairs="", rows=0)),
    ))
    c.data = ml_collections.ConfigDict(dict(
        path="",                 # empty = the embedded default dataset
        modality_dropout=0.1,    # chance that a multimodal training example keeps only one modality
        on_error="skip",         # skip (count, log path and reason) | raise
        group_size=0,            # > 1: a group's records (a speaker's) in runs of this many (omni/data/order.py)
        # rows per modality set of each batch (omni/data/mixture.py), e.g. "image+text=16,text=8"
        # (rows) or "image+text=2,text=1" (weights); empty = the training split's own proportions
        mixture="",
        rows_multiple=0,         # rows per set come in multiples of this; 0 = auto (4 at batch 64;
                                 # set it to the batch shards when they are more, e.g. 8 devices)
        # worker processes that decode and build batches (grain); 0 = threads of the training
        # process (data.num_threads), -1 = one per host core but one. Raise it where decoding
        # cannot keep up with the step (`omni bench --pipeline-batches N` says so)
        workers=0, num_threads=2, prefetch=4,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        split="test", batch_size=128, max_examples=1000,
        tasks="retrieval",        # run every train.eval_every: retrieval,zeroshot,linear_probe,paired,robustness
        templates="",             # zero-shot prompts, '|'-separated; empty = "a photo of a {}"
        pairs="",                 # pairs .jsonl for the "paired" task
        probe_train_examples=0,   # 0 = 10 x eval.max_examples training examples for the probe
    ))
    return c
