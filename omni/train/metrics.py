"""What a run reports: metrics.jsonl and TensorBoard events (process 0 only), and a progress bar
(or plain lines when stderr is a log file, as on a cluster)."""
from __future__ import annotations

import json
import sys
import time
import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
from rich.progress import TextColumn, TimeRemainingColumn

from omni import storage


class MetricsWriter:
    """metrics.jsonl and TensorBoard, process 0 only. On an object store, which cannot append,
    metrics.jsonl is uploaded whole at each write (omni.storage.AppendedText)."""

    def __init__(self, workdir):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter  # deferred: slow to import (it pulls in protobuf)
            self.jsonl = storage.AppendedText(workdir / "metrics.jsonl")
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in row.items():
            if key != "step":
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


class Progress:
    """A rich progress bar on stderr: step, loss, steps/s, ETA."""

    def __init__(self, total: int, start: int):
        self.enabled = jax.process_index() == 0
        console = Console(stderr=True)
        # Not a terminal (a cluster log file): plain lines at each log step instead of a bar.
        self.plain = not console.is_terminal
        self.total = total
        self.started = time.perf_counter()
        self.start_step = start
        if self.enabled and not self.plain:
            self.bar = RichProgress(
                TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[rate]} steps/s  mfu {task.fields[mfu]}"),
                TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-", rate="-", mfu="-")
            self.bar.start()

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        if not self.plain:
            self.bar.update(self.task, completed=step, **fields)
        elif fields:
            rate = (step - self.start_step) / (time.perf_counter() - self.started)
            eta = (self.total - step) / max(rate, 1e-9)
            print(f"step {step}/{self.total}  loss {fields['loss']}  {fields['rate']} steps/s  "
                  f"mfu {fields['mfu']}  ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and not self.plain:
            self.bar.stop()
