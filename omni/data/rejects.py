"""What `omni data build` could not use, and why: one JSON line per problem in DIR/rejects.jsonl.

At billions of samples some are always bad (a cut download, an empty caption, a molecule RDKit
cannot parse). A bad sample must cost one line here, never the build: each line names where it
came from (`source`: manifest file:line, or tar shard), the sample's `key`, a short `reason` from
the fixed list below (counted per reason in Beam metrics and the final summary), and a `detail`
for a human. `kept` is true when only part of the sample was dropped (a manifest line keeps its
caption when its image does not decode, an unknown tar member is ignored) and the rest was written.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from omni.errors import ManifestError

# The reasons (stable strings: scripts and dashboards count them).
UNDECODABLE_MEDIA = "undecodable media"
MISSING_FILE = "missing file"
MISSING_CAPTION = "missing caption"
UNKNOWN_EXTENSION = "unknown extension"
TRUNCATED_TAR = "truncated tar"
EMPTY_SHARD = "empty shard"
INVALID_SMILES = "invalid SMILES"
INVALID_SMELL = "invalid smell"
INVALID_JSON = "invalid JSON"
NOT_UTF8 = "not UTF-8"
NO_MODALITY = "no modality"
DUPLICATE_ID = "duplicate id"
INVALID_SPLIT = "invalid split"
INVALID_FIELD = "invalid field"
UNKNOWN_FIELD = "unknown field"  # a warning: the field is ignored, never a reason to stop

METRICS_NAMESPACE = "omni.data.build"


@dataclass(frozen=True)
class Reject:
    source: str
    key: str
    reason: str
    detail: str
    kept: bool = False

    def line(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    def message(self) -> str:
        """The line printed on stderr (the detail already says what was kept)."""
        return f"{self.source}: {self.detail}"

    def stops_a_strict_build(self) -> bool:
        """Under --on-error fail every problem stops the build, except an ignored unknown field."""
        return self.reason != UNKNOWN_FIELD


class BuildStopped(ManifestError):
    """`--on-error fail` met a bad sample; the message names its source, key and what is wrong."""

    MARKER = "omni-build-stopped:"

    def __init__(self, reject: Reject):
        # The marker travels through the runner's own error text (a worker's exception reaches
        # the launching process as a string), so the CLI can print this one line, not a traceback.
        super().__init__(f"{self.MARKER}{reject.line()}")
        self.reject = reject

    @classmethod
    def find(cls, text: str) -> Reject | None:
        """The Reject inside an error text from a Beam runner, or None."""
        at = text.find(cls.MARKER)
        if at < 0:
            return None
        try:
            fields, _ = json.JSONDecoder().raw_decode(text[at + len(cls.MARKER):])
            return Reject(**fields)
        except (ValueError, TypeError):
            return None
