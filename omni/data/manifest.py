"""The manifest names older code imports: `build(MANIFEST, DIR)` and its helpers.

A manifest is one kind of source of `omni data build` (interface.md, "Manifest"): each line a JSON
object with id, split, label and one field per modality (file paths relative to the manifest's
folder). The reading lives in omni.data.sources.manifest, the per-line checks in omni.data.samples,
the build in omni.data.build; this module keeps the old entry points working.
"""
from __future__ import annotations

from omni.data.build import build as build_sources
from omni.data.samples import known_fields, stable_split
from omni.data.sources.manifest import json_lines

__all__ = ["build", "json_lines", "known_fields", "stable_split"]


def build(manifest, out_dir, test_fraction: float = 0.1, on_error: str = "skip", **kwargs) -> dict:
    """Build one manifest (or several: a list) into out_dir; see omni.data.build.build."""
    return build_sources(manifest, out_dir, test_fraction=test_fraction, on_error=on_error, **kwargs)
