"""Evaluation of a trained run. Every task returns a JSON-able dict; `write_result` puts it in
WORKDIR/eval/<name>.json, and `periodic_evaluations` runs the tasks named in config.eval.tasks
during training as flat `eval/<task>/...` metrics.

  * retrieval            R@1/5/10 between two modalities (several correct targets per query).
  * zeroshot             classify by the most similar class prompt; one template or an ensemble.
  * probe                linear probe (L2 logistic regression) on frozen embeddings.
  * paired               Winoground-form text, image and group scores on a pairs file.
  * robustness           zero-shot with all input modalities vs with one dropped.
  * embedding, results, periodic, commands   embeddings, results on disk, the training hook,
                         `omni eval ...`.

The public names are re-exported here for users; modules inside omni import the submodules
directly. `omni.eval.commands` (which loads runs through omni.run) is not re-exported.
"""
from omni.eval.embedding import ListSource, check_modality, embed_all, embed_records
from omni.eval.paired import WINOGROUND_CHANCE, paired_compositional, read_pairs, winoground_scores
from omni.eval.periodic import TASKS, PeriodicEvaluator, eval_tasks, periodic_evaluations
from omni.eval.probe import PROBE_CS, fit_linear_probe, linear_probe, validation_split
from omni.eval.results import flatten, write_result
from omni.eval.retrieval import (RECALL_AT, chance_recall, recall_at_k, retrieval, retrieval_during_training,
                                 retrieval_scores)
from omni.eval.robustness import fused_embed_records, missing_modality
from omni.eval.zeroshot import DEFAULT_TEMPLATE, class_embeddings, ensemble, templates_list, zeroshot

__all__ = [
    "DEFAULT_TEMPLATE", "PROBE_CS", "RECALL_AT", "TASKS", "WINOGROUND_CHANCE", "ListSource", "PeriodicEvaluator",
    "chance_recall", "check_modality", "class_embeddings", "embed_all", "embed_records", "ensemble",
    "eval_tasks", "fit_linear_probe", "flatten", "fused_embed_records", "linear_probe", "missing_modality",
    "paired_compositional", "periodic_evaluations", "read_pairs", "recall_at_k", "retrieval",
    "retrieval_during_training", "retrieval_scores", "templates_list", "validation_split", "winoground_scores",
    "write_result", "zeroshot",
]
