"""Export: a tiny run of all five modalities trained here -> a bundle -> `omni embed` in a fresh
process gives the in-framework embeddings of text, images, audio, video and smells; a tampered
bundle is refused; fine-tuning starts from the bundle's weights."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SMALL_ALL
from tests.test_bad_inputs import mp4_bytes, write_wav

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
TEXTS = ["a red square", "a blue bar on black", "", "a yellow thing with ünïcode ✓",
         "a very long caption that is certainly longer than the twelve tokens the small config keeps"]


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = np.zeros((24, 20 + (i % 3) * 4, 3), np.uint8)
        r, c = rng.integers(0, 8, 2)
        pixels[r:r + 10, c:c + 10] = list(COLORS.values())[i % 4]
        path = folder / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


SMELLS = ["CCOC(C)=O", "CCCCCCO", "CC(C)CCOC(C)=O", "CC(=O)O"]


def write_media(folder: Path, count: int) -> tuple[list[Path], list[Path]]:
    """count WAV tones (pitch by index) and count mp4 clips (a bar moving, speed by index)."""
    folder.mkdir(parents=True, exist_ok=True)
    wavs, clips = [], []
    for i in range(count):
        t = np.arange(8000) / 16000
        wavs.append(folder / f"{i}.wav")
        write_wav(wavs[-1], 0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 4)) * t), 16000)
        frames = np.zeros((6, 16, 16, 3), np.uint8)
        for f in range(6):
            column = (f * (1 + i % 3)) % 12
            frames[f, :, column:column + 4] = list(COLORS.values())[i % 4]
        clips.append(folder / f"{i}.mp4")
        clips[-1].write_bytes(mp4_bytes(frames))
    return wavs, clips


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A 10-step run on 24 examples holding text + image + audio + video + smell, exported."""
    from omni.config import load_config
    from omni.data.manifest import build
    from omni.export.bundle import export_bundle as cli_export
    from omni.train import train

    root = tmp_path_factory.mktemp("export")
    images = write_images(root / "files" / "img", 24)
    wavs, clips = write_media(root / "files" / "media", 24)
    lines = [json.dumps({"id": f"x{i}", "text": f"a {list(COLORS)[i % 4]} square", "image": f"img/{p.name}",
                         "audio": f"media/{wavs[i].name}", "video": f"media/{clips[i].name}",
                         "smell": {"smiles": [SMELLS[i % 4], SMELLS[(i + 1) % 4]], "weights": [0.6, 0.4]}})
             for i, p in enumerate(images)]
    (root / "files" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    data = root / "data"
    build(root / "files" / "manifest.jsonl", data)
    config = load_config(None, SMALL_ALL + [
        f"--config.data.path={data}", "--config.train.steps=10", "--config.train.log_every=5",
        "--config.train.eval_every=0", "--config.train.checkpoint_every=10", "--config.train.warmup_steps=2"])
    workdir = root / "run"
    train(config, workdir)
    summary = cli_export(workdir, root / "bundle")
    return root / "bundle", workdir, data, (images, wavs, clips), summary


def test_bundle_layout(bundle):
    import jax

    path, _, _, _, summary = bundle
    names = sorted(p.name for p in path.iterdir())
    programs = [f"encoder_{m}.stablehlo" for m in ("text", "image", "audio", "video", "smell")]
    assert names == sorted(["weights.safetensors", "config.json", "tokenizer.json", "assets.json",
                            "preprocessing.json", "bundle.json", "manifest.json", *programs])
    assert summary["step"] == 10 and summary["platforms"] == ["cpu", "cuda"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(n for n in names if n != "manifest.json")
    for name in names:
        assert not (path / name).read_bytes().startswith(b"\x80"), f"{name} looks like a pickle"
    pre = json.loads((path / "preprocessing.json").read_text())
    assert pre["text"]["max_len"] == 12 and pre["text"]["pad_id"] == 0
    assert pre["image"]["size"] == 16 and pre["image"]["patch"] == 8
    assert pre["image"]["pixel_mean"] == 0.5 and pre["image"]["pixel_std"] == 0.25
    assert pre["audio"]["sample_rate"] == 16000 and pre["audio"]["inputs"]["audio/waveform"]["shape"] == ["b", 5120]
    assert pre["video"]["num_frames"] == 2 and pre["smell"]["vector_dim"] == 16
    assert len(json.loads((path / "assets.json").read_text())["smell"]["components"]) == 16
    exported = jax.export.deserialize(bytearray((path / "encoder_image.stablehlo").read_bytes()))
    assert exported.platforms == ("cpu", "cuda")
    assert str(exported.in_avals[-1].shape[0]) == "b" and exported.in_avals[-1].shape[1:] == (16, 16, 3)


EMBED_IN_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from omni.export.embed import cli_embed
    bundle, out_dir, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    results = [cli_embed(bundle, "text", texts=inputs.pop("text"), out=f"{out_dir}/text.npy"),
               cli_embed(bundle, "smell", texts=inputs.pop("smell"), out=f"{out_dir}/smell.npy")]
    results += [cli_embed(bundle, m, files=files, out=f"{out_dir}/{m}.npy") for m, files in inputs.items()]
    loaded = [m for m in ("omni.train", "omni.run.setup", "omni.model", "omni.objectives", "omni.eval") if m in sys.modules]
    print(json.dumps({"results": results, "training_modules_loaded": loaded}))
""")


def test_embed_in_fresh_process_equals_framework(bundle, tmp_path):
    import jax

    from omni.data.pipeline import ExampleEncoder, stack
    from omni.run.load import load_run
    from omni.modalities.smell import stored_smell

    path, workdir, _, (images, wavs, clips), _ = bundle
    files = {"image": images[:3] + [images[5]], "audio": wavs[:3], "video": clips[:5]}  # chunks padded to 4, 4, 8
    smells = ["ethyl acetate", "CCCCCCO; CC(=O)O", '{"smiles": ["CCOC(C)=O", "CC(=O)O"], "weights": [0.9, 0.1]}']
    inputs = {"text": TEXTS, "smell": smells, **{m: list(map(str, f)) for m, f in files.items()}}
    run = subprocess.run([sys.executable, "-c", EMBED_IN_FRESH_PROCESS, str(path), str(tmp_path), json.dumps(inputs)],
                         capture_output=True, text=True, timeout=400, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["training_modules_loaded"] == []
    assert [r["shape"] for r in report["results"]] == [[5, 32], [3, 32], [4, 32], [3, 32], [5, 32]]

    config, setup, params, assets, _ = load_run(workdir)
    encode = ExampleEncoder(config, assets, train=False)
    smell_records = [stored_smell(["CCOC(C)=O"]), stored_smell(["CCCCCCO", "CC(=O)O"]),
                     stored_smell(["CCOC(C)=O", "CC(=O)O"], [0.9, 0.1])]
    records = {"text": [{"text": t} for t in TEXTS], "smell": [{"smell": s} for s in smell_records],
               **{m: [{m: p.read_bytes()} for p in f] for m, f in files.items()}}
    for modality, rows in records.items():
        got = np.load(tmp_path / f"{modality}.npy")
        batch = stack([encode(r, i)[0] for i, r in enumerate(rows)])
        assert batch[f"{modality}/present"].all() or modality == "text"  # "" is an absent text
        expected = np.asarray(jax.device_get(setup.embed_fn(modality)(params, batch)))
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.max(np.abs(got - expected)) <= 1e-5, modality
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "smell.npy")[1], np.load(tmp_path / "smell.npy")[2])


def test_chunked_and_padded_batches_agree(bundle):
    from omni.export.embed import embed_files
    from omni.run.bundle import load_bundle

    path, _, _, (images, _, _), _ = bundle
    opened = load_bundle(path)
    whole = embed_files(opened, "image", images[:7])
    chunked = embed_files(opened, "image", images[:7], batch_size=3)
    assert whole.shape == (7, 32)
    assert np.max(np.abs(whole - chunked)) <= 1e-5
    assert embed_files(opened, "text", []).shape == (0, 32)
    with pytest.raises(ValueError, match="not in this bundle"):
        embed_files(opened, "sonar", ["x.ping"])


def test_cli_embed_arguments(bundle, tmp_path):
    from omni.export.embed import cli_embed

    path, _, _, (images, _, _), _ = bundle
    with pytest.raises(ValueError, match="not both and not neither"):
        cli_embed(path, "text", out=tmp_path / "z.npy")
    with pytest.raises(ValueError, match="--text applies to"):
        cli_embed(path, "image", texts=["hi"], out=tmp_path / "z.npy")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        cli_embed(path, "image", files=[tmp_path / "nope.png"], out=tmp_path / "z.npy")
    (tmp_path / "caption.txt").write_text("a red square\n")
    result = cli_embed(path, "text", files=[tmp_path / "caption.txt"], out=tmp_path / "z")
    assert result["out"] == str(tmp_path / "z.npy") and result["shape"] == [1, 32]
    cli_embed(path, "text", texts=["a red square"], out=tmp_path / "w.npy")
    assert np.array_equal(np.load(tmp_path / "z.npy"), np.load(tmp_path / "w.npy"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: cannot decode image"):
        cli_embed(path, "image", files=[images[0], bad], out=tmp_path / "y.npy")


@pytest.mark.parametrize("target", ["encoder_image.stablehlo", "weights.safetensors", "tokenizer.json"])
def test_tampered_bundle_is_refused(bundle, tmp_path, target):
    from omni.export.embed import embed_files
    from omni.run.bundle import load_bundle, load_bundle_params

    path = bundle[0]
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    data = bytearray((copy / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / target).write_bytes(bytes(data))
    for attempt in (lambda: load_bundle(copy), lambda: embed_files(copy, "text", ["hi"]),
                    lambda: load_bundle_params(copy, {})):
        with pytest.raises(ValueError, match=f"{target} does not match manifest.json"):
            attempt()


def test_missing_or_extra_files_are_refused(bundle, tmp_path):
    from omni.run.bundle import load_bundle

    path = bundle[0]
    extra = tmp_path / "extra"
    shutil.copytree(path, extra)
    (extra / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not listed in manifest.json"):
        load_bundle(extra)
    missing = tmp_path / "missing"
    shutil.copytree(path, missing)
    (missing / "encoder_text.stablehlo").unlink()
    with pytest.raises(ValueError, match="encoder_text.stablehlo is listed in manifest.json but missing"):
        load_bundle(missing)


def test_bundle_params_check_shapes(bundle):
    from safetensors.numpy import load_file

    from omni.run.bundle import load_bundle_params

    path = bundle[0]
    weights = load_file(str(path / "weights.safetensors"))
    like = _nest(weights)
    loaded = load_bundle_params(path, like)
    assert np.array_equal(loaded["stems"]["text"]["tokens"], weights["stems/text/tokens"])
    like["stems"]["text"]["positions"] = np.zeros((99, 32), np.float32)
    with pytest.raises(ValueError, match="'stems/text/positions' has shape"):
        load_bundle_params(path, like)
    del like["stems"]["text"]["positions"]
    with pytest.raises(ValueError, match="'stems/text/positions' is in weights.safetensors but not in the model"):
        load_bundle_params(path, like)


def _nest(flat):
    out = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def test_finetuning_starts_from_the_bundle_weights(bundle, tmp_path):
    """lr=0 for one step keeps the initial params, so the step-1 checkpoint holds exactly the params
    that training started from. A different seed makes sure they did not come from a fresh init."""
    import jax
    from safetensors.numpy import load_file

    from omni.run.load import load_run
    from omni.run.bundle import flatten_params
    from omni.train import train

    path, _, data, _, _ = bundle
    from omni.config import load_config
    config = load_config(None, SMALL_ALL + [
        f"--config.data.path={data}", f"--config.init_from={path}", "--config.train.steps=1",
        "--config.train.lr=0.0", "--config.train.seed=7", "--config.train.eval_every=0",
        "--config.train.log_every=1", "--config.train.checkpoint_every=1"])
    workdir = tmp_path / "finetune"
    train(config, workdir)
    _, _, params, assets, step = load_run(workdir)
    assert step == 1
    got = flatten_params(jax.device_get(params))
    expected = load_file(str(path / "weights.safetensors"))
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert np.array_equal(got[key], expected[key]), key
    assert assets["tokenizer"].to_json() == (path / "tokenizer.json").read_text(encoding="utf-8")
    assert assets["smell"] == json.loads((path / "assets.json").read_text())["smell"]  # the SVD basis too


def chunk_reads() -> int:
    """Chunks tensorstore has read in this process so far (each array of a checkpoint is one or
    more chunks): the count that tells what a restore read."""
    import tensorstore as ts

    return sum(m["values"][0]["value"] for m in ts.experimental_collect_matching_metrics("/tensorstore/cache/chunk_cache/reads"))


def test_eval_and_export_restore_the_params_alone(bundle):
    """load_run (eval, export) reads the params' arrays and nothing of the optimizer state; they
    equal the params of a full restore, and so do the exported weights."""
    import jax
    from safetensors.numpy import load_file

    from omni.checkpoint import Checkpoints
    from omni.run.bundle import flatten_params
    from omni.run.load import load_run, opened_run

    path, workdir, _, _, _ = bundle
    before = chunk_reads()
    _, setup, params, _, step = load_run(workdir)
    params_only = chunk_reads() - before
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1000, async_save=False)
    before = chunk_reads()
    with jax.set_mesh(setup.mesh):
        full = checkpoints.restore_state(step, setup.abstract_state)
    everything = chunk_reads() - before
    checkpoints.close()
    leaves = len(jax.tree.leaves(params))
    optimizer = len(jax.tree.leaves(full["opt_state"]))
    assert optimizer >= 2 * leaves  # Adam's two moments per parameter
    print(f"chunks read: params only {params_only}, full state {everything}; {leaves} params, "
          f"{optimizer} optimizer arrays")
    assert leaves <= params_only < leaves + optimizer // 2 <= everything
    expected = flatten_params(jax.device_get(full["params"]))
    got, exported = flatten_params(jax.device_get(params)), load_file(str(path / "weights.safetensors"))
    assert sorted(got) == sorted(expected) == sorted(exported)
    for key in expected:
        assert np.array_equal(got[key], expected[key]) and np.array_equal(exported[key], expected[key]), key
    # export's way: host arrays, a group of at most 4 KB (or one larger tensor) at a time
    with opened_run(workdir) as run:
        groups = list(run.param_groups(max_bytes=4096))
    assert len(groups) > 1
    for group in groups:
        assert len(group) == 1 or sum(value.nbytes for value in group.values()) <= 4096, sorted(group)
        for key, value in group.items():
            assert isinstance(value, np.ndarray) and np.array_equal(value, expected[key]), key
    assert sorted(key for group in groups for key in group) == sorted(expected)
