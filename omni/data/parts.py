"""The file names of a build's scratch folder, shared by the Beam workers that write them
(omni.data.beam_build) and the build that gathers them (omni.data.build)."""
from __future__ import annotations

DIRECT = "DirectRunner"  # Beam's local runner, the default


def part_name(kind: str, index: int, split: str = "") -> str:
    """Names of a work item's files in the build's scratch folder."""
    return {"split": f"{split}-{index:06d}.array_record", "rejects": f"rejects-{index:06d}.jsonl",
            "done": f"done-{index:06d}.json", "groups": f"groups-{split}-{index:06d}.npy"}[kind]
