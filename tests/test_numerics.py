"""Numerics of the accelerator's path, checked on a CPU (issue 33): the vocabulary logits, the
losses and every cross-device sum of the gradients are f32 when the matmuls run in bf16.

On a CPU, omni.nn.matmul runs its own products (a custom VJP with f32 outputs), so these tests
select the accelerator's with `omni.nn.PATH = "accelerator"`. The HLO test lowers and compiles
the train step of a shrunk configs/gpu_1b.py (bf16 compute and residual, remat="dots", text +
image, SigLIP) on 4 simulated CPU devices (data 2 x FSDP 2) in its own process, and reads the
HLO right after XLA's SPMD partitioner, the pass that places the cross-device sums and that every
backend runs: XLA CPU's later passes promote every bf16 all-reduce to f32 (AllReducePromotion),
which the GPU compiler does not, so the finished CPU program would pass whatever the model did.

    python -m tests.test_numerics OUT_DIR   # the worker: writes lowered.txt and the dump there
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni import config as config_lib, nn, parallel
from omni.run.setup import build_setup
from tests.conftest import BASE_XLA_FLAGS, REPO

VOCAB = 400  # a size no other dimension of the shrunk model has

SHRUNK_GPU_1B = [
    "--config.model.width=32", "--config.model.depth=1", "--config.model.heads=2",
    "--config.model.embed_dim=32", f"--config.modalities.text.vocab_size={VOCAB}",
    "--config.modalities.text.max_len=12", "--config.modalities.image.size=16",
    "--config.modalities.image.patch=8", "--config.train.batch_size=16",
    "--config.data.mixture=image+text=8,text=8",  # gpu_1b's two modality sets, no data read
    "--config.mesh.data=2", "--config.mesh.fsdp=2",
    # the GPU's attention path (tokens reordered, jax.nn.dot_product_attention) with XLA's
    # implementation, since cuDNN's does not lower for a CPU
    "--config.model.attention=xla",
]


def lower_shrunk_gpu_1b(out_dir: str) -> None:
    """The worker: the train step's StableHLO to OUT_DIR/lowered.txt, and XLA's HLO after SPMD
    partitioning to OUT_DIR/dump."""
    jax.config.update("jax_enable_compilation_cache", False)  # a cached program is not partitioned
    nn.PATH = "accelerator"
    config = config_lib.load_config(str(REPO / "configs" / "gpu_1b.py"), SHRUNK_GPU_1B)
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    setup = build_setup(config, mesh)
    batch = {sub: {key: jax.ShapeDtypeStruct(shape, dtype) for key, (shape, dtype) in arrays.items()}
             for sub, arrays in setup.batch_spec().items()}
    with jax.set_mesh(mesh):
        lowered = setup.compile_train_step().lower(setup.abstract_state, batch, setup.step_args)
        Path(out_dir, "lowered.txt").write_text(lowered.as_text())
        lowered.compile()


@pytest.fixture(scope="module")
def shrunk_gpu_1b_hlo(tmp_path_factory) -> tuple[str, str]:
    """(StableHLO as lowered, HLO after the SPMD partitioner) of the shrunk gpu_1b's train step."""
    out = tmp_path_factory.mktemp("numerics")
    dump = out / "dump"
    flags = (f"--xla_force_host_platform_device_count=4 {BASE_XLA_FLAGS} --xla_dump_to={dump} "
             "--xla_dump_hlo_pass_re=spmd-partitioning --xla_dump_hlo_module_re=jit_train_step")
    done = subprocess.run([sys.executable, "-m", "tests.test_numerics", str(out)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, XLA_FLAGS=flags), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    partitioned = sorted(dump.glob("*jit_train_step*.after_spmd-partitioning.*"))
    assert len(partitioned) == 1, sorted(p.name for p in dump.iterdir() if p.suffix == ".txt")
    texts = (out / "lowered.txt").read_text(), partitioned[0].read_text()
    shutil.rmtree(out)  # the dump also holds the compiled program's object files: 30 MB
    return texts


def test_vocabulary_logits_are_f32_products_of_bf16_operands(shrunk_gpu_1b_hlo):
    lowered, _ = shrunk_gpu_1b_hlo
    logits = [line for line in lowered.splitlines()
              if "stablehlo.dot_general" in line and re.search(rf"-> tensor<\d+x\d+x{VOCAB}x\w+>$", line)]
    assert logits  # the MLM head, once per text sub-batch
    for line in logits:
        assert re.search(rf"\(tensor<[\dx]+bf16>, tensor<{VOCAB}x\d+xbf16>\) -> tensor<[\dx]+x{VOCAB}xf32>$",
                         line), line


def test_every_reduction_of_the_step_is_f32(shrunk_gpu_1b_hlo):
    """Sums and maxima: the losses (the vocabulary's logsumexp, the masked and contrastive means),
    layer norm's statistics, attention's softmax (XLA's computes it in f32 too), and the sums of
    the gradients over broadcast dimensions."""
    lowered, _ = shrunk_gpu_1b_hlo
    operand_types = [re.search(r": \((tensor<[^)]*)\)", line).group(1)
                     for line in lowered.splitlines() if "stablehlo.reduce(" in line]
    assert len(operand_types) > 100
    assert not [t for t in operand_types if "bf16" in t or "f16>" in t]


def test_every_cross_device_sum_is_f32(shrunk_gpu_1b_hlo):
    """The all-reduces (data parallel) and reduce-scatters (FSDP) the partitioner placed: the
    gradients of the bf16 products' weights among them, which JAX's own transpose gave in bf16
    (omni.nn._accelerator_matmul). The all-gathers of the weights for the forward pass may be
    bf16: those move values, they sum nothing."""
    _, partitioned = shrunk_gpu_1b_hlo
    sums = re.findall(r"= (\S+(?: \S+)*?) (?:all-reduce|all-reduce-start|reduce-scatter)\(", partitioned)
    assert len(sums) > 20
    assert not [s for s in sums if re.search(r"\b(bf16|f16)\[", s)], sums
    gradients = [s for s in sums if re.search(r"f32\[\d+,\d+", s)]  # matrices, not per-row scalars
    assert gradients, sums
    assert re.search(r"bf16\[[\d,]+\]\S* (?:dot|convolution)\(", partitioned)  # the products are bf16


@pytest.mark.parametrize("spec,x_shape,w_shape", [
    ("btd,df->btf", (2, 5, 8), (8, 12)),
    ("bqhk,hkd->bqd", (2, 5, 3, 4), (3, 4, 8)),
    ("...i,io->...o", (2, 3, 5, 8), (8, 6)),
])
@pytest.mark.parametrize("f32_out", [False, True])
def test_accelerator_products_and_gradients(monkeypatch, spec, x_shape, w_shape, f32_out):
    """The accelerator's matmul, run on a CPU: bf16 result (f32 for f32_out), dx in x's dtype from
    a bf16 product, and dw in f32, the f32 formula on the bf16-rounded operands and cotangent."""
    monkeypatch.setattr(nn, "PATH", "accelerator")
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(np.float32)
    w = rng.normal(size=w_shape).astype(np.float32)
    out, vjp = jax.vjp(lambda a, b: nn.matmul(a, b, jnp.bfloat16, spec, f32_out=f32_out), x, w)
    assert out.dtype == (jnp.float32 if f32_out else jnp.bfloat16)
    cotangent = rng.normal(size=out.shape).astype(np.float32)
    dx, dw = vjp(jnp.asarray(cotangent, out.dtype))
    assert dx.dtype == dw.dtype == jnp.float32

    leading = len(x_shape) - len(spec.split(",")[0].replace("...", ""))
    spec = spec.replace("...", "ABCD"[:leading])
    inputs, result = spec.split("->")
    x_spec, w_spec = inputs.split(",")
    rounded = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32))  # noqa: E731
    xr, wr, gr = rounded(x), rounded(w), rounded(cotangent)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.einsum(spec, xr, wr), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(dx, np.einsum(f"{result},{w_spec}->{x_spec}", gr, wr), rtol=1e-2, atol=1e-2)
    # dw leaves its product in f32: exact up to f32 summation order, no bf16 rounding
    np.testing.assert_allclose(dw, np.einsum(f"{x_spec},{result}->{w_spec}", xr, gr), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    lower_shrunk_gpu_1b(sys.argv[1])
