"""Preemption: how a cluster asks a run to stop (SIGTERM), turned into a flag the loop checks
after each step, so the run saves a checkpoint and exits cleanly instead of dying mid-step."""
from __future__ import annotations

import signal
import threading


class PreemptionSignal:
    """Turns SIGTERM (how clusters preempt) into a flag that the loop checks after each step."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
