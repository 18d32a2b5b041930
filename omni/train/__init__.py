"""Training: `train(config, workdir, evaluator=None)` trains or resumes the run in workdir."""
from omni.errors import Preempted
from omni.train.loop import Evaluator, train

__all__ = ["Evaluator", "Preempted", "train"]
