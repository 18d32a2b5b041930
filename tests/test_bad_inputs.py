"""A manifest full of bad and odd inputs: the build skips (and reports) unusable lines, odd but
valid images train, an undecodable image is skipped at training time with its path, and the run
completes."""
import json
import subprocess

import numpy as np
from PIL import Image

from tests.conftest import SMALL, omni_command


def write_files(root):
    img = root / "img"
    img.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(img / "ok.png")
    Image.fromarray(rgb).convert("L").save(img / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(img / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(img / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(img / "cmyk.jpg")
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(img / "huge.png")
    data = (img / "ok.png").read_bytes()
    (img / "truncated.png").write_bytes(data[: len(data) // 2])
    (img / "empty.png").write_bytes(b"")
    lines = [json.dumps({"id": f"good{i}", "text": f"a picture number {i}", "image": "img/ok.png"})
             for i in range(4)]
    lines += [json.dumps({"id": name, "text": f"an odd {name} image", "image": f"img/{name}.{ext}"})
              for name, ext in (("gray", "png"), ("rgba", "png"), ("sixteen", "png"), ("cmyk", "jpg"),
                                ("huge", "png"), ("truncated", "png"))]
    lines += [
        json.dumps({"id": "empty-with-text", "text": "the image file is empty", "image": "img/empty.png"}),
        json.dumps({"id": "unknown-field", "text": "has a field omni does not know", "colour": "red"}),
        # unusable lines:
        json.dumps({"id": "empty-alone", "image": "img/empty.png"}),
        json.dumps({"id": "missing", "image": "img/nowhere.png"}),
        '{"id": "broken", "text": ',
        json.dumps({"id": "nothing"}),
        json.dumps({"id": "good0", "text": "a duplicate id"}),
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_bytes("\n".join(lines).encode() + b'\n{"id": "latin1", "text": "caf\xe9"}\n')
    return manifest


def test_bad_inputs_are_skipped_and_reported_and_the_run_completes(tmp_path):
    manifest = write_files(tmp_path / "files")
    data = tmp_path / "data"
    out = subprocess.run(omni_command("data", "build", str(manifest), "--out", str(data), "--test-fraction", "0"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    built = json.loads(out.stdout)
    assert built["skipped_lines"] == 6
    assert built["splits"] == {"train": 12}
    for reason in ("manifest.jsonl:13: image file", "is empty", "manifest.jsonl:14: image file",
                   "does not exist", "manifest.jsonl:15: not valid JSON", "manifest.jsonl:16: the line holds no modality",
                   "manifest.jsonl:17: duplicate id 'good0'", "manifest.jsonl:18: not UTF-8",
                   "manifest.jsonl:11: image file", "the rest of the line is kept",
                   "unknown field(s) colour ignored"):
        assert reason in out.stderr, reason

    strict = subprocess.run(omni_command("data", "build", str(manifest), "--out", str(tmp_path / "strict"),
                                         "--on-error", "raise"), capture_output=True, text=True, timeout=300)
    assert strict.returncode == 2 and "manifest.jsonl:13" in strict.stderr.strip().splitlines()[-1]

    workdir = tmp_path / "run"
    out = subprocess.run(omni_command("train", "--workdir", str(workdir), *SMALL, f"--config.data.path={data}",
                                      "--config.train.steps=3", "--config.train.log_every=1",
                                      "--config.train.eval_every=0"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped input:" in out.stderr and "truncated.png" in out.stderr and "cannot decode image" in out.stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and rows[-1]["skipped_examples"] >= 1
    assert all(np.isfinite(r["loss"]) for r in rows)

    out = subprocess.run(omni_command("train", "--workdir", str(tmp_path / "strict-run"), *SMALL,
                                      f"--config.data.path={data}", "--config.train.steps=3",
                                      "--config.train.eval_every=0", "--config.data.on_error=raise"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "truncated.png" in out.stderr
