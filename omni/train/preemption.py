"""Preemption: how a cluster asks a run to stop (SIGTERM; SLURM's --signal through the sbatch
script), turned into a decision the loop takes after each step: save a checkpoint there, and stop.

One process: omni's own SIGTERM handler sets a flag. Several processes (or any process that joined
`jax.distributed`): JAX's preemption notifier owns SIGTERM, and every process must stop at the
SAME step, or the ones still training would wait forever in a collective for the ones saving. So
the loop asks JAX's preemption sync point every step: once any process has been signalled, the
processes agree on the next step that all of them reach, and each returns True there.
"""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
    """`with Preemption() as preemption: ... if preemption.reached(step): save and stop`."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.received = True

    def reached(self, step: int) -> bool:
        """True at the step where this run must save and stop (the same step on every process).
        Call it at every step, with the step just finished."""
        if jax.distributed.is_initialized():
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
