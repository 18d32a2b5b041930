"""Preemption: how a cluster asks a run to stop (SIGTERM, or SIGUSR1 from SLURM's --signal through
launch/slurm.sbatch), turned into a decision the loop takes after each step: save a checkpoint
there, and stop.

One process: omni's own handler sets a flag. Several processes (or any process that joined
`jax.distributed`): JAX's preemption notifier owns SIGTERM, and every process must stop at the
SAME step, or the ones still training would wait forever in a collective for the ones saving. So
the loop asks JAX's preemption sync point every step: once any process has been signalled, the
processes agree on the next step that all of them reach, and each returns True there. SIGUSR1 is
handed to JAX's notifier as a SIGTERM to this process. (SLURM cannot deliver SIGTERM itself to a
step without cancelling it: `scancel --signal=TERM` starts the step's termination.)
"""
from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """`with Preemption() as preemption: ... if preemption.reached(step): save and stop`."""

    def __init__(self):
        self.received = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, _frame):
        if number == signal.SIGUSR1 and jax.distributed.is_initialized():
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier took SIGTERM at initialisation
        self.received = True

    def reached(self, step: int) -> bool:
        """True at the step where this run must save and stop (the same step on every process).
        Call it at every step, with the step just finished."""
        if jax.distributed.is_initialized():
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)
