"""One sample -> a record to write (and its split), or the reasons it cannot be used.

This is the per-sample logic of `omni data build`, run inside Beam workers. It never raises: any
exception from a decoder (PIL, libsndfile, FFmpeg, RDKit) on any bytes becomes a `Reject`, so one
bad sample among billions costs a line in rejects.jsonl, never the build (the fuzz test holds it
to that). Each modality's own check (`prepare`, `check_bytes`) decides what decodes.

Two shapes of sample:
  * a manifest line (JSON; file paths relative to the manifest's folder). A file that does not
    decode is dropped from its line and the rest is kept, as omni always did for manifests;
  * a WebDataset sample: the tar members sharing a key, mapped to modalities by extension
    (`EXTENSIONS`). These corpora are pairs, so a member that does not decode, or a missing
    caption, rejects the whole sample.
A sample's split is `--split` when given, else its own `split` field, else a stable hash of its id.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from etils import epath

from omni.data import rejects as R
from omni.modalities import registry

# WebDataset member extension -> modality ("meta": label, split and other metadata, as JSON).
# `omni data build --map EXT=MODALITY` changes or extends it.
EXTENSIONS = {
    "jpg": "image", "jpeg": "image", "png": "image", "webp": "image",
    "txt": "text", "caption": "text",
    "json": "meta",
    "wav": "audio", "flac": "audio", "mp3": "audio", "ogg": "audio",
    "mp4": "video", "webm": "video", "avi": "video",
    "smi": "smell", "smiles": "smell", "smell.json": "smell",
}
KEPT = "; the rest of the line is kept"  # ends the detail of a field dropped from a kept manifest line
SPLIT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Options:
    """How samples become records: the split rule, and the extension map for tar shards."""
    test_fraction: float = 0.1
    split: str | None = None  # every sample goes here when set (--split)
    extensions: dict = field(default_factory=lambda: dict(EXTENSIONS))
    # a config (--preprocess-for): media fields are stored decoded to its shapes (omni.modalities.stored)
    preprocess: object = None


@dataclass
class Outcome:
    """A sample's result: the record (None when rejected), its split, and what went wrong."""
    record: dict | None = None
    split: str | None = None
    rejects: list = field(default_factory=list)
    dropped_fields: int = 0  # modality fields that did not decode (in kept and rejected samples)


def known_fields() -> set[str]:
    """Fields a manifest line may hold: id, split, label, group and every registered modality."""
    return {"id", "split", "label", "group", *registry.MODALITIES}


def stable_split(key: str, test_fraction: float) -> str:
    """train or test from a hash of the id: rebuilding never moves an example between splits."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
    return "test" if bucket < test_fraction else "train"


def _split(given, key: str, options: Options, source: str) -> tuple[str | None, R.Reject | None]:
    split = options.split or given or stable_split(key, options.test_fraction)
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        return None, R.Reject(source, key, R.INVALID_SPLIT,
                              f"split {split!r} is not a name (letters, digits and _, starting with a letter)")
    return split, None


def _reason(name: str, error: Exception) -> str:
    modality = registry.MODALITIES.get(name)
    if modality is not None and modality.file_field:
        return R.MISSING_FILE if "does not exist" in str(error) else R.UNDECODABLE_MEDIA
    if name == "text":
        return R.MISSING_CAPTION
    if name == "smell":
        return R.INVALID_SMILES if "SMILES" in str(error) else R.INVALID_SMELL
    return R.INVALID_FIELD


def _error(e: Exception) -> str:
    """A decoder's error as one line; ValueErrors are omni's own messages, others get their type."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"


def parse_line(raw: bytes, where: str, key: str) -> tuple[dict | None, R.Reject | None]:
    """A manifest line -> its JSON object, or why it is not one."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, R.Reject(where, key, R.NOT_UTF8, f"not UTF-8 ({e.reason} at byte {e.start})")
    except (json.JSONDecodeError, RecursionError) as e:
        return None, R.Reject(where, key, R.INVALID_JSON, f"not valid JSON ({getattr(e, 'msg', e)})")
    if not isinstance(entry, dict):
        return None, R.Reject(where, key, R.INVALID_JSON, "each line must be a JSON object")
    return entry, None


def manifest_sample(raw: bytes, manifest: str, number: int, root, options: Options) -> Outcome:
    """Line `number` of a manifest (its folder `root`) -> Outcome. A field that does not decode is
    dropped with its path and reason and the rest of the line kept; a line with nothing usable
    left is rejected."""
    where, key = f"{manifest}:{number}", f"line-{number}"
    entry, bad = parse_line(raw, where, key)
    if bad:
        return Outcome(rejects=[bad])
    given = entry.get("id")
    key = key if given in (None, "") else str(given)  # an empty id would name no record: the line's instead
    out = Outcome()
    unknown = set(entry) - known_fields()
    if unknown:
        out.rejects.append(R.Reject(where, key, R.UNKNOWN_FIELD,
                                    f"unknown field(s) {', '.join(sorted(map(str, unknown)))} ignored "
                                    f"(known: {', '.join(sorted(known_fields()))})", kept=True))
    record = {"id": key, "label": str(entry.get("label", "")), "group": str(entry.get("group", ""))}
    dropped, sources = [], []
    for name, modality in registry.MODALITIES.items():
        if name not in entry:
            continue
        value = entry[name]
        try:
            record[name] = modality.prepare(value, root)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this field's problem, not the build's
            what = f"{name} file {epath.Path(root) / value}" if modality.file_field and isinstance(value, str) else name
            dropped.append((_reason(name, e), f"{what}: {_error(e)}"))
            continue
        if modality.file_field:
            sources.append(str(epath.Path(root) / value))
    out.dropped_fields = len(dropped)
    held = [name for name in registry.MODALITIES if name in record]
    if not held:
        if dropped:
            out.rejects.append(R.Reject(where, key, dropped[0][0], "; ".join(d for _, d in dropped)))
        else:
            out.rejects.append(R.Reject(where, key, R.NO_MODALITY, "the line holds no modality (give at least "
                                        f"one of {', '.join(registry.MODALITIES)})"))
        return out
    out.rejects += [R.Reject(where, key, reason, detail + KEPT, kept=True)
                    for reason, detail in dropped]
    split, bad = _split(entry.get("split"), key, options, where)
    if bad:
        out.rejects.append(bad)
        return out
    record["source"] = ", ".join(sources) or where
    out.record, out.split = record, split
    return out


def _member_value(name: str, ext: str, data: bytes):
    """A tar member's bytes -> what the modality's check takes (bytes, text, a smell object)."""
    modality = registry.get(name)
    if modality.file_field:
        return modality.check_bytes(data)
    text = data.decode("utf-8")
    if name == "smell":
        value = json.loads(text) if ext.endswith("json") else {"smiles": text.split()}
        return modality.prepare(value, None)
    return modality.prepare(text.strip() if name == "text" else text, None)


def tar_sample(members: dict[str, bytes], shard: str, key: str, options: Options) -> Outcome:
    """The members of one WebDataset sample (extension -> bytes) -> Outcome. Its id is
    `<shard name>/<key>`, so the same shards always give the same ids (and hashed splits)."""
    stem = shard.rsplit("/", 1)[-1].split(".", 1)[0]
    sample_id, where = f"{stem}/{key}", shard
    out, record, meta = Outcome(), {"id": sample_id, "label": "", "source": f"{shard}:{key}"}, {}
    fatal = []
    for ext in sorted(members):
        name = options.extensions.get(ext.lower())
        data = members[ext]
        if name is None:
            out.rejects.append(R.Reject(where, key, R.UNKNOWN_EXTENSION,
                                        f"member {key}.{ext}: unknown extension '.{ext}' ignored "
                                        f"(known: {', '.join(sorted(options.extensions))})", kept=True))
            continue
        if name == "meta":
            try:
                meta = json.loads(data.decode("utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("must be a JSON object")
            except (ValueError, RecursionError) as e:
                fatal.append((R.INVALID_JSON, f"member {key}.{ext}: not a JSON object ({_error(e)})"))
            continue
        if name in record:
            out.rejects.append(R.Reject(where, key, R.UNKNOWN_EXTENSION,
                                        f"member {key}.{ext}: a second {name} member ignored", kept=True))
            continue
        try:
            record[name] = _member_value(name, ext, data)
        except Exception as e:  # noqa: BLE001 - any decoder failure rejects this sample, not the build
            out.dropped_fields += 1
            reason = R.UNDECODABLE_MEDIA if isinstance(e, UnicodeDecodeError) else _reason(name, e)
            fatal.append((reason, f"member {key}.{ext}: {_error(e)}"))
    if fatal:
        out.rejects.append(R.Reject(where, key, fatal[0][0], "; ".join(d for _, d in fatal)))
        return out
    held = [name for name in registry.MODALITIES if name in record]
    if not held:
        out.rejects.append(R.Reject(where, key, R.NO_MODALITY, f"sample {key} holds no modality "
                                    f"(members: {', '.join(sorted(members)) or 'none'})"))
        return out
    if "text" not in record:
        out.rejects.append(R.Reject(where, key, R.MISSING_CAPTION,
                                    f"sample {key} has no caption (a .txt or .caption member)"))
        return out
    for field in ("label", "group"):
        if meta.get(field) is not None:
            record[field] = str(meta[field])
    split, bad = _split(meta.get("split"), sample_id, options, where)
    if bad:
        out.rejects.append(bad)
        return out
    out.record, out.split = record, split
    return out
