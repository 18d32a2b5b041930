"""The `omni` command. `eval` prints one JSON object on stdout; progress and logs go to stderr."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jax

from omni import bench
from omni.config import load_config
from omni.data.build import build
from omni.data.default.build import build_default
from omni.data.samples import EXTENSIONS
from omni.errors import ConfigError, Preempted
from omni.eval import commands as eval_commands
from omni.eval.periodic import PeriodicEvaluator
from omni.export.bundle import export_bundle
from omni.export.embed import cli_embed
from omni.export.match import cli_match
from omni.launchers import jobset_manifest, tpu_vm_command
from omni.scaling.commands import cli_fit, cli_lr_transfer, cli_sweep
from omni.train import train


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.a.b=v` overrides from ordinary arguments."""
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni", description="One early-fusion transformer for every modality.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) a model; --config.KEY=VALUE overrides")
    train.add_argument("--config", default=None, help="config file (default: configs/tiny.py)")
    train.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")

    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser(
        "build", help="build a dataset from manifests and WebDataset shards (Apache Beam)",
        description="SOURCE: manifest .jsonl files or globs, WebDataset tar shards (brace ranges: "
                    "shards/{000..099}.tar), on any filesystem etils.epath reads.")
    build.add_argument("sources", nargs="+", metavar="SOURCE")
    build.add_argument("--out", required=True)
    build.add_argument("--workers", type=int, default=None,
                       help="DirectRunner worker processes (default: this machine's cores)")
    build.add_argument("--split", default=None, help="put every sample in this split")
    build.add_argument("--test-fraction", type=float, default=0.1,
                       help="share of samples without a `split` that go to `test` (stable hash of the id)")
    build.add_argument("--on-error", choices=["skip", "fail", "raise"], default="skip",
                       help="a bad sample: skip it (DIR/rejects.jsonl) or stop at the first (raise = fail)")
    build.add_argument("--beam-runner", default=None, help="e.g. FlinkRunner, SparkRunner, DataflowRunner, "
                       "PortableRunner (default: DirectRunner on this machine)")
    build.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                       help="passed to Beam as --KEY=VALUE (repeatable)")
    build.add_argument("--map", action="append", default=[], metavar="EXT=MODALITY",
                       help="map a WebDataset member extension to a modality (or 'meta'), e.g. cls=meta")
    build.add_argument("--preprocess-for", default=None, metavar="CONFIG",
                       help="store images, audio and video already decoded to CONFIG's shapes (with its "
                            "--config.* overrides), so training decodes nothing; SOURCE 'default' builds "
                            "the embedded default dataset")

    evaluate = commands.add_parser("eval", help="evaluate a trained run")
    eval_commands = evaluate.add_subparsers(dest="eval_command", required=True)
    for name in ("retrieval", "zeroshot"):
        sub = eval_commands.add_parser(name)
        sub.add_argument("--workdir", required=True)
        sub.add_argument("--data", default=None, help="dataset folder (default: the run's data.path)")
        sub.add_argument("--split", default="test")
        sub.add_argument("--max-examples", type=int, default=None)
        if name == "retrieval":
            sub.add_argument("--query", required=True)
            sub.add_argument("--target", required=True)
            sub.add_argument("--rerank", type=int, default=0, metavar="K",
                             help="re-order each query's contrastive top K with the matching head")
        else:
            sub.add_argument("--modality", required=True)
            sub.add_argument("--template", action="append", default=None,
                             help='repeat for an ensemble (default "a photo of a {}")')
    probe = eval_commands.add_parser("linear_probe", help="logistic regression on frozen embeddings")
    probe.add_argument("--workdir", required=True)
    probe.add_argument("--data", default=None)
    probe.add_argument("--modality", required=True)
    probe.add_argument("--split", default="test")
    probe.add_argument("--train-split", default="train")
    probe.add_argument("--max-examples", type=int, default=None)
    probe.add_argument("--max-train", type=int, default=None)
    paired = eval_commands.add_parser("paired", help="Winoground-style text/image/group scores")
    paired.add_argument("--workdir", required=True)
    paired.add_argument("--pairs", required=True)
    robust = eval_commands.add_parser("robustness", help="zero-shot with one input modality dropped")
    robust.add_argument("--workdir", required=True)
    robust.add_argument("--data", default=None)
    robust.add_argument("--split", default="test")
    robust.add_argument("--modalities", default=None, help='e.g. "image,text"')
    robust.add_argument("--template", action="append", default=None)
    robust.add_argument("--fusion", choices=["early", "late"], default="early")
    robust.add_argument("--max-examples", type=int, default=None)
    sweep = commands.add_parser("sweep", help="run a scaling-law grid of runs (finished runs are skipped)")
    sweep.add_argument("--config", default=None)
    sweep.add_argument("--out", default=None)
    sweep.add_argument("--only", type=int, default=None, help="run just this grid point (a SLURM array task)")
    sweep.add_argument("--runner", choices=["local", "slurm"], default=None,
                       help="local: one run after another here; slurm: one job array (default: the config's)")
    sweep.add_argument("--max-parallel", type=int, default=None, help="slurm: at most K array tasks at once")
    sweep.add_argument("--status", default=None, metavar="DIR",
                       help="list each grid point of DIR as done / running / queued / failed, with job ids")
    scaling = commands.add_parser("scaling", help="scaling-law analysis")
    scaling_commands = scaling.add_subparsers(dest="scaling_command", required=True)
    fit = scaling_commands.add_parser("fit", help="fit L(N, D) to the runs in DIR; write fit.json and plots")
    fit.add_argument("dir")
    lr_transfer = scaling_commands.add_parser(
        "lr-transfer", help="best learning rate per width under SP and muP (a mup_transfer sweep in DIR); plot")
    lr_transfer.add_argument("dir")

    plan = commands.add_parser("plan", help="compile the train step for the configured mesh; print memory and FLOPs")
    plan.add_argument("--config", default=None)
    plan.add_argument("--devices", type=int, default=None,
                      help="simulate this many CPU devices (to plan a mesh larger than this machine)")

    bench = commands.add_parser("bench", help="time the train step; print step time, MFU, tokens/s")
    bench.add_argument("--config", default=None)
    bench.add_argument("--steps", type=int, default=5, help="0: time the input pipeline alone (--pipeline-batches)")
    bench.add_argument("--pipeline-batches", type=int, default=0,
                       help="also time this many batches of the input pipeline alone")
    bench.add_argument("--synthetic", action="store_true", help="random inputs instead of the configured data")
    bench.add_argument("--profile", default=None, metavar="DIR",
                       help="after timing, trace 2 more steps with jax.profiler into DIR (TensorBoard / XProf)")

    export = commands.add_parser("export", help="write a portable bundle from a run's newest checkpoint")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True)

    embed = commands.add_parser("embed", help="embed inputs with a bundle's exported programs")
    embed.add_argument("bundle")
    embed.add_argument("files", nargs="*", help="input files (for text: one text per file)")
    embed.add_argument("--modality", required=True)
    embed.add_argument("--text", action="append", default=None, help="a text (or, for --modality smell, compounds separated by ';') to embed (repeatable)")
    embed.add_argument("--out", required=True, help="OUT.npy")

    match = commands.add_parser("match", help="a bundle's matching score of one pair of inputs")
    match.add_argument("bundle")
    match.add_argument("--a-modality", nargs=2, required=True, metavar=("MODALITY", "INPUT"))
    match.add_argument("--b-modality", nargs=2, required=True, metavar=("MODALITY", "INPUT"),
                       help="INPUT: a text (or a file holding it), or a media file")
    return parser


def _positionals_first(argv: list[str], options_with_values: set[str]) -> list[str]:
    """`embed BUNDLE --modality M FILE...`: argparse cannot take positionals after an option once
    the positional list has started, so move every positional before the options."""
    positionals, options, i = [], [], 0
    while i < len(argv):
        if argv[i] in options_with_values and i + 1 < len(argv):
            options += argv[i:i + 2]
            i += 2
        elif argv[i].startswith("-"):
            options.append(argv[i])
            i += 1
        else:
            positionals.append(argv[i])
            i += 1
    return positionals + options


def _launch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omni launch", description="run `omni train TRAIN_ARGS` on every host of a TPU VM slice or a "
        "Kubernetes JobSet (omni.launchers); --print shows the command or manifest without running it",
        usage="omni launch {tpu-vm,jobset} [options] [--print] -- TRAIN_ARGS...")
    targets = parser.add_subparsers(dest="target", required=True)
    tpu = targets.add_parser("tpu-vm", help="gcloud compute tpus tpu-vm ssh --worker=all")
    tpu.add_argument("--tpu", required=True)
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project", default=None)
    tpu.add_argument("--repo-dir", default="~/omni", help="the checkout (with .venv) on each worker")
    jobset = targets.add_parser("jobset", help="a JobSet manifest, applied with kubectl apply -f -")
    jobset.add_argument("--image", required=True)
    jobset.add_argument("--processes", type=int, required=True, help="pods, one omni process each")
    jobset.add_argument("--gpus-per-pod", type=int, default=8)
    jobset.add_argument("--name", default="omni-train")
    for target in (tpu, jobset):
        target.add_argument("--print", action="store_true", help="show what would run; run nothing")
    return parser


def _launch(argv: list[str]) -> int:
    """`omni launch TARGET OPTIONS -- TRAIN_ARGS`: everything after `--` goes to `omni train`."""
    split = argv.index("--") if "--" in argv else len(argv)
    args, train_args = _launch_parser().parse_args(argv[:split]), argv[split + 1:]
    if args.target == "tpu-vm":
        command = tpu_vm_command(args.tpu, args.zone, train_args, args.repo_dir, args.project)
        if args.print:
            print(shlex.join(command))
            return 0
        return subprocess.run(command).returncode
    manifest = jobset_manifest(train_args, args.image, args.processes, args.name, args.gpus_per_pod)
    if args.print:
        print(manifest, end="")
        return 0
    return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:
        return _launch(argv[1:])
    if argv[:1] == ["embed"]:
        argv = ["embed"] + _positionals_first(argv[1:], {"--modality", "--out", "--text"})
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    try:
        if args.command == "train":
            return _train(args, overrides)
        if args.command in ("plan", "bench"):
            return _plan_or_bench(args, overrides)
        if args.command == "data" and args.preprocess_for:
            return _print(_data_build(args, load_config(args.preprocess_for, overrides)))
        if overrides:
            raise ConfigError(f"--config.* overrides only apply to train, plan, bench and data build "
                              f"--preprocess-for (got {overrides[0]})")
        if args.command == "data":
            return _print(_data_build(args))
        if args.command == "eval":
            return _print(_eval(args))
        if args.command == "sweep":
            return _print(cli_sweep(args.config, args.out, only=args.only, runner=args.runner,
                                    max_parallel=args.max_parallel, status=args.status))
        if args.command == "scaling":
            if args.scaling_command == "lr-transfer":
                return _print(cli_lr_transfer(args.dir))
            return _print(cli_fit(args.dir))
        if args.command == "export":
            return _print(export_bundle(args.workdir, args.out))
        if args.command == "match":
            return _print(cli_match(args.bundle, *args.a_modality, *args.b_modality))
        if args.command == "embed":
            return _print(cli_embed(args.bundle, args.modality, args.files, args.text, args.out))
    except ConfigError as e:
        print(f"omni: config error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:  # a sweep's run saved at a preemption signal: rerun to resume
        print(f"omni: {e}", file=sys.stderr)
        return 0
    except (FileNotFoundError, ValueError) as e:
        print(f"omni: {e}", file=sys.stderr)
        return 2
    return 1


def _print(result: dict) -> int:
    print(json.dumps(result))
    return 0


def _train(args, overrides) -> int:
    config = load_config(args.config, overrides)
    workdir = args.workdir or str(Path("runs") / config.name)  # a string: gs:// and s3:// stay URLs
    try:
        metrics = train(config, workdir, evaluator=PeriodicEvaluator())
    except Preempted as e:
        print(f"omni: {e}", file=sys.stderr)
        return 0
    except FloatingPointError as e:  # too many consecutive non-finite steps (train.max_bad_steps)
        print(f"omni: {e}", file=sys.stderr)
        return 3
    if jax.process_index() == 0:
        summary = {k: v for k, v in metrics.items() if k == "loss" or k.startswith("eval/")}
        print(json.dumps({"workdir": str(workdir), **summary}))
    return 0


def _plan_or_bench(args, overrides) -> int:
    if getattr(args, "devices", None):
        # Read when jax starts its backend (at the first device query, after this): simulate the
        # devices the mesh asks for, on the CPU.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
        jax.config.update("jax_platforms", "cpu")
    config = load_config(args.config, overrides)
    if args.command == "plan":
        return _print(bench.plan(config))
    return _print(bench.bench(config, steps=args.steps, pipeline_batches=args.pipeline_batches,
                              synthetic=args.synthetic, profile_dir=args.profile))


def _data_build(args, preprocess_for=None) -> dict:
    if args.sources == ["default"]:
        return build_default(args.out, preprocess_for)
    extensions = dict(EXTENSIONS)
    for pair in args.map:
        ext, sep, modality = pair.partition("=")
        if not sep or not ext or not modality:
            raise ValueError(f"--map {pair!r}: expected EXT=MODALITY, e.g. --map cls=meta")
        extensions[ext.lstrip(".").lower()] = modality
    return build(args.sources, args.out, workers=args.workers, split=args.split, on_error=args.on_error,
                 test_fraction=args.test_fraction, beam_runner=args.beam_runner, beam_options=args.beam_option,
                 extensions=extensions, preprocess_for=preprocess_for)


def _eval(args) -> dict:
    command = args.eval_command
    if command == "linear_probe":
        return eval_commands.cli_linear_probe(args.workdir, args.data, args.modality, args.train_split, args.split,
                                              args.max_examples, args.max_train)
    if command == "paired":
        return eval_commands.cli_paired(args.workdir, args.pairs)
    if command == "robustness":
        return eval_commands.cli_robustness(args.workdir, args.data, args.split, args.modalities, args.template,
                                            args.fusion, args.max_examples)
    if command == "zeroshot":
        return eval_commands.cli_zeroshot(args.workdir, args.data, args.split, args.modality, args.template,
                                          args.max_examples)
    return eval_commands.cli_retrieval(args.workdir, args.data, args.split, args.query, args.target,
                                       args.max_examples, rerank=args.rerank)


if __name__ == "__main__":
    sys.exit(main())
