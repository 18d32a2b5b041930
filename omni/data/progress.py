"""The progress line of `omni data build` on stderr: shards done of the total, samples/s, rejects.

The runner (local or remote) runs the whole pipeline inside one blocking call, so a thread of the
launching process watches the scratch folder instead: each finished work item leaves a small
`done-<index>.json` there (omni.data.beam_build). This works for any runner whose workers write
where the launcher can list: a local folder, a bucket.
"""
from __future__ import annotations

import json
import sys
import threading
import time

from etils import epath


class Progress:
    """Every `every` seconds (and once at the end), print a line when something changed."""

    def __init__(self, scratch, total: int, every: float = 5.0, log=None):
        self.scratch, self.total, self.every = epath.Path(scratch), total, every
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.seen: set[str] = set()
        self.samples = self.rejects = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="omni-data-build-progress", daemon=True)
        self._printed = None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self):
        while not self._stop.wait(self.every):
            self.poll()

    def poll(self):
        try:
            names = [p.name for p in self.scratch.glob("done-*.json")]
        except OSError:
            return
        for name in sorted(set(names) - self.seen):
            try:
                summary = json.loads((self.scratch / name).read_text())
            except (OSError, ValueError):
                continue  # read again next time
            self.seen.add(name)
            self.samples += sum(summary["counts"].values())
            self.rejects += sum(summary["reasons"].values())
        state = (len(self.seen), self.samples, self.rejects)
        if state != self._printed:
            self.log(self.line())
            self._printed = state

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (f"omni data build: {len(self.seen)}/{self.total} shards, {self.samples:,} samples "
                f"({self.samples / elapsed:,.0f}/s), {self.rejects:,} rejects")
