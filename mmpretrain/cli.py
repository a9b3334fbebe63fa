"""Pretrain fused image-text encoders (ResNet + BERT + cross-modal fusion) on Ray.

Make or convert WebDataset shards, train on an embedded local Ray or a cluster, resume by
running the same command again, evaluate, export and report. Every run is described by one
config: a preset or YAML file plus dotted overrides (`mmpretrain config keys` lists them).
"""

# The CLI only parses, loads the config and calls the library: no logic of its own. Each
# command's handler is attached with set_defaults(handler=...) next to its parser.

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from mmpretrain.config import (
    ConfigError,
    RunConfig,
    describe_fields,
    load_config,
    preset_names,
)
from mmpretrain.errors import (
    CheckpointError,
    DataQualityError,
    HardStopError,
    JobError,
    ReportError,
    ResourceError,
)

# The generated configuration reference, in the project's docs (`mmpretrain config docs`).
REFERENCE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="tiny", help=f"preset name ({', '.join(preset_names())}) or a YAML path"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="dotted overrides, e.g. train.max_steps=50 model.fusion.layers=2",
    )


def _add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's own log lines (same as observe.verbose=true)",
    )


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """The dotted overrides with what the run flags stand for appended, so they win."""
    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"cluster.address={args.address}")
    if args.verbose:
        overrides.append("observe.verbose=true")
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmpretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('mmpretrain')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="show the resolved config or its keys")
    config_commands = config.add_subparsers(dest="action", required=True)
    show = config_commands.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(handler=_config_show)
    config_commands.add_parser("keys", help="list every key with its description").set_defaults(
        handler=_config_keys
    )
    docs = config_commands.add_parser(
        "docs", help="write the configuration reference (run config, sweep and job specs)"
    )
    docs.add_argument(
        "--out",
        default=str(REFERENCE_PAGE),
        help="where to write it; - prints it (default: %(default)s)",
    )
    docs.add_argument(
        "--check", action="store_true", help="exit 1 if --out differs from what would be written"
    )
    docs.set_defaults(handler=_config_docs)

    data = commands.add_parser("data", help="make or look at shards")
    data_commands = data.add_subparsers(dest="action", required=True)
    synth = data_commands.add_parser("synth", help="write the synthetic shapes data set")
    synth.add_argument("--out", required=True)
    synth.add_argument("--samples", type=int, required=True)
    synth.add_argument("--shard-size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-side", type=int, default=96)
    synth.add_argument(
        "--first-index",
        type=int,
        default=0,
        help="offset of sample indices (use a large one for a held-out split)",
    )
    synth.set_defaults(handler=_synth)

    convert = data_commands.add_parser(
        "convert", help="local images + captions (table or folder) -> img2dataset shards"
    )
    convert.add_argument("source", help="CSV/TSV/Parquet/JSONL table, or a folder of images")
    convert.add_argument("--out", required=True)
    convert.add_argument("--shard-size", type=int, default=10_000)
    convert.add_argument(
        "--resize-mode", default="no", help="no, keep_ratio, keep_ratio_largest, center_crop"
    )
    convert.add_argument("--image-size", type=int, default=256)
    convert.add_argument("--jpeg-quality", type=int, default=95)
    convert.add_argument("--processes", type=int, default=1)
    convert.add_argument("--image-column", default="image")
    convert.add_argument("--caption-column", default="caption")
    convert.set_defaults(handler=_convert)

    inspect = data_commands.add_parser(
        "inspect", help="count samples, bad samples by reason, caption and image sizes"
    )
    inspect.add_argument("pattern", help="shard file, folder, glob or brace pattern")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the unusable share passes data.max_bad_fraction",
    )
    _add_config_args(inspect)
    inspect.set_defaults(handler=_inspect)

    tokenizer = commands.add_parser("tokenizer", help="train a WordPiece tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="action", required=True)
    tok_train = tokenizer_commands.add_parser("train", help="train on the captions of shards")
    tok_train.add_argument("--data", required=True, help="shard pattern")
    tok_train.add_argument("--out", required=True)
    tok_train.add_argument("--vocab-size", type=int, default=1000)
    tok_train.set_defaults(handler=_tokenizer_train)

    train = commands.add_parser("train", help="pretrain (resumes if the run directory exists)")
    _add_config_args(train)
    train.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)",
    )
    _add_verbose_arg(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval", help="retrieval, ITM re-ranking and zero-shot metrics of a run/checkpoint/export"
    )
    evaluate.add_argument(
        "--checkpoint", required=True, help="run directory, checkpoint folder or export folder"
    )
    evaluate.add_argument("--data", required=True, help="held-out shard pattern")
    evaluate.add_argument("--out", default="eval.json", help="where to write the metrics JSON")
    evaluate.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)"
    )
    _add_verbose_arg(evaluate)
    evaluate.add_argument("overrides", nargs="*", metavar="key.path=value")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser(
        "export", help="checkpoint -> one safetensors file + config + tokenizer"
    )
    export.add_argument("--checkpoint", required=True, help="run directory or checkpoint folder")
    export.add_argument("--out", required=True, help="export folder to write")
    export.set_defaults(handler=_export)

    checkpoints = commands.add_parser("checkpoints", help="look at a run's checkpoints")
    checkpoint_commands = checkpoints.add_subparsers(dest="action", required=True)
    listing = checkpoint_commands.add_parser(
        "list", help="each checkpoint's step, completeness (manifest and checksums) and size"
    )
    listing.add_argument("run", help="run directory (train.storage_path/train.run_name)")
    listing.set_defaults(handler=_checkpoints_list)

    report = commands.add_parser(
        "report", help="figures (convergence, attention, comparison) and report.md of a run"
    )
    report.add_argument("run", help="run directory (train.storage_path/train.run_name)")
    report.add_argument(
        "--compare",
        nargs="+",
        action="extend",
        default=[],
        metavar="RUN_OR_EVAL_JSON",
        help="other run directories or eval JSON files to compare with the run's own evaluation",
    )
    report.add_argument(
        "--pairs", type=int, default=4, help="held-out pairs in the attention figure"
    )
    report.add_argument(
        "--data", default=None, help="shard pattern of those pairs (default: the run's data.val)"
    )
    report.set_defaults(handler=_report)

    sweep = commands.add_parser(
        "sweep", help="search fusion and loss weights with Ray Tune, then rank the trials"
    )
    sweep_commands = sweep.add_subparsers(dest="action", required=True)
    sweep_run = sweep_commands.add_parser(
        "run", help="run a sweep spec (tune/*.yaml); `mmpretrain sweep SPEC` is short for it"
    )
    sweep_run.add_argument("spec", help="sweep spec (tune/*.yaml)")
    sweep_run.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="run-config overrides for every trial (data paths, storage)",
    )
    sweep_run.add_argument("--address", help="Ray cluster to run the trials on (cluster.address)")
    _add_verbose_arg(sweep_run)
    sweep_run.set_defaults(handler=_sweep_run)
    sweep_results = sweep_commands.add_parser(
        "results", help="rank a sweep directory's trials; write its best config"
    )
    sweep_results.add_argument("dir", help="sweep directory (train.storage_path/<sweep name>)")
    sweep_results.add_argument("--json", action="store_true", help="print the rows as JSON")
    sweep_results.set_defaults(handler=_sweep_results)

    job = commands.add_parser(
        "job", help="submit, follow, stop and resubmit jobs (jobs/*.yaml) on a Ray cluster"
    )
    job.add_argument(
        "--address",
        default=None,
        help="the cluster's dashboard URL, e.g. http://127.0.0.1:8265 (default: "
        "RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, then a Ray on this machine)",
    )
    job_commands = job.add_subparsers(dest="action", required=True)
    job_submit = job_commands.add_parser("submit", help="send a job spec; follow its logs")
    job_submit.add_argument("spec", help="job spec (jobs/*.yaml)")
    job_submit.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="appended to the entrypoint"
    )
    job_resubmit = job_commands.add_parser(
        "resubmit", help="the same spec and overrides under a new id (resumes the run)"
    )
    job_resubmit.add_argument("job_id")
    for sending in (job_submit, job_resubmit):
        sending.add_argument("--no-wait", action="store_true", help="print the id and return")
        sending.add_argument("--submission-id", default=None, help="the new job's id")
    job_logs = job_commands.add_parser("logs", help="the job's output")
    job_logs.add_argument("job_id")
    job_logs.add_argument("--follow", action="store_true", help="until the job ends")
    for action, text in (
        ("status", "how the job stands (and where a stopped one stopped)"),
        ("stop", "stop gracefully: wait for its checkpoint, say the step"),
    ):
        job_commands.add_parser(action, help=text).add_argument("job_id")
    job_commands.add_parser("list", help="every job on the cluster")
    for job_parser in job_commands.choices.values():
        job_parser.add_argument(
            "--address", default=argparse.SUPPRESS, help="the cluster (as above)"
        )
    job.set_defaults(handler=_job)

    cluster = commands.add_parser(
        "cluster", help="a local multi-node Ray cluster on this machine (token auth, own ports)"
    )
    cluster_commands = cluster.add_subparsers(dest="action", required=True)
    for action, text in (
        ("up", "start a head and worker nodes; print how to use them"),
        ("down", "stop exactly this cluster's processes (never `ray stop`)"),
        ("status", "nodes alive, CPUs and resources, dashboard, env"),
        ("env", 'print `export` lines: eval "$(mmpretrain cluster env)"'),
    ):
        sub = cluster_commands.add_parser(action, help=text)
        sub.add_argument(
            "--dir", default=None, help="state dir (default /tmp/mmpretrain-cluster-USER)"
        )
        if action == "up":
            sub.add_argument("--workers", type=int, default=1, help="worker nodes besides the head")
            sub.add_argument("--cpus-per-node", type=int, default=4, help="logical CPUs per node")
            sub.add_argument("--dashboard-port", type=int, default=8265)
        sub.set_defaults(handler=_cluster)

    demo = commands.add_parser("demo", help="synthetic data -> tiny model -> retrieval eval")
    demo.add_argument("--runs-dir", default="runs")
    _add_verbose_arg(demo)
    demo.add_argument("overrides", nargs="*", metavar="key.path=value")
    demo.set_defaults(handler=_demo)
    return parser


def _print_result(result) -> int:  # result: mmpretrain.train.launch.TrainResult
    """Where things are, then the final evaluation table: printed here, once, and not by the
    workers (see train/loop.py ``_evaluate_and_report``), so it comes last and whole.

    A run stopped by a signal says at which step and exits 128 + the signal's number, the
    shell's way of saying "interrupted", so a script or job can tell it from a finished run.
    """
    from mmpretrain.evaluate.report import format_table

    print(f"\nrun directory: {result.run_dir}")
    print(f"checkpoint:    {result.checkpoint}")
    print(f"metrics:       {result.run_dir / 'metrics.jsonl'}")
    if result.stopped_by is not None:
        from mmpretrain.train.stop import stopped_message

        print(f"\n{stopped_message(result.stopped_at)}")
        return 128 + result.stopped_by
    eval_path = result.run_dir / "eval.json"
    if eval_path.exists():
        print(f"eval results:  {eval_path}\n")
        print(format_table(json.loads(eval_path.read_text())))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from mmpretrain.data.convert import ConvertError, ConvertOptions, convert

    try:
        fields = dataclasses.fields(ConvertOptions)  # the flags are named after the fields
        options = ConvertOptions(**{f.name: getattr(args, f.name) for f in fields})
        summary = convert(args.source, args.out, options)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from mmpretrain.data.inspect import format_report, inspect_shards

    cfg = load_config(args.config, args.overrides)
    report = inspect_shards(args.pattern, cfg.data)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    limit = cfg.data.max_bad_fraction
    if args.strict and report["bad_fraction"] > limit:
        print(
            f"error: {report['bad_fraction']:.2%} of samples are unusable, more than "
            f"data.max_bad_fraction={limit:g}",
            file=sys.stderr,
        )
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mmpretrain.evaluate.report import format_table
    from mmpretrain.train.eval_job import run_evaluation

    metrics = run_evaluation(args.checkpoint, args.data, _run_overrides(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(format_table(metrics))
    print(f"\nmetrics written to {out.resolve()}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def _config_keys(args: argparse.Namespace) -> int:
    for key, text in describe_fields():
        print(f"{key:<28} {text}")
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    text = reference_text()
    if args.out == "-":
        print(text, end="")
        return 0
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            print(f"error: {out} is not current; run `mmpretrain config docs`", file=sys.stderr)
            return 1
        print(f"{out} is current")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def reference_text() -> str:
    """The configuration reference: the run config, then the two kinds of spec that pick
    run configs (assembled here, the floor that may import config, sweep and jobs)."""
    from mmpretrain.config.reference import Section, render_reference
    from mmpretrain.jobs.spec import JobFile
    from mmpretrain.sweep.spec import SweepFile

    return render_reference(
        "Configuration reference",
        "Every key a user may set, with its type, default and meaning. A run config is a "
        "preset or YAML file plus dotted overrides (`mmpretrain config show` prints the "
        "resolved one); a bad key or value fails at once as `error: <file>: <key>: got X; "
        "allowed ...`, naming `<command line>` for an override typed there.",
        [
            Section(
                "Run config", RunConfig, "`--config` presets and YAML files; dotted overrides."
            ),
            Section(
                "Sweep spec",
                SweepFile,
                "`tune/*.yaml`, run by `mmpretrain sweep run SPEC` (or `mmpretrain sweep SPEC`);"
                " see [sweeps.md](sweeps.md).",
            ),
            Section(
                "Job spec",
                JobFile,
                "`jobs/*.yaml`, sent by `mmpretrain job submit SPEC`; checked whole before "
                "anything is sent; see [operations.md](operations.md).",
            ),
        ],
    )


def _synth(args: argparse.Namespace) -> int:
    from mmpretrain.data.synth import write_synthetic_shards

    paths = write_synthetic_shards(
        args.out, args.samples, args.shard_size, args.seed, args.image_side, args.first_index
    )
    print(f"wrote {args.samples} samples in {len(paths)} shards to {args.out}")
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    from mmpretrain.data.tokenizer import load_tokenizer, train_tokenizer

    out = train_tokenizer(args.data, args.out, args.vocab_size)
    print(f"saved tokenizer ({load_tokenizer(str(out)).vocab_size} tokens) to {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _run_overrides(args))  # a bad key fails before Ray loads
    from mmpretrain.train.launch import run_training

    return _print_result(run_training(cfg))


def _export(args: argparse.Namespace) -> int:
    from mmpretrain.train.checkpoint.export import export

    print(f"exported to {export(args.checkpoint, args.out)}")
    return 0


def _checkpoints_list(args: argparse.Namespace) -> int:
    from mmpretrain.train.checkpoint.manifest import format_listing, list_checkpoints

    print(format_listing(list_checkpoints(args.run)))  # a path or a URI
    return 0


def _report(args: argparse.Namespace) -> int:
    from mmpretrain.report import write_report

    print(f"report written to {write_report(args.run, args.compare, args.pairs, args.data)}")
    return 0


def _sweep_run(args: argparse.Namespace) -> int:
    from mmpretrain.sweep.driver import run_sweep
    from mmpretrain.sweep.results import show_results
    from mmpretrain.sweep.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    print(show_results(run_sweep(spec, address=args.address, verbose=args.verbose), False))
    return 0


def _sweep_results(args: argparse.Namespace) -> int:
    from mmpretrain.sweep.results import show_results

    print(show_results(args.dir, as_json=args.json))
    return 0


def _job(args: argparse.Namespace) -> int:
    """Specs are checked with this CLI's own parser: the grammar lives in one place."""
    from mmpretrain.jobs import client
    from mmpretrain.jobs.spec import load_job_spec

    spec = None
    if args.action == "submit":  # checked before any request is sent
        spec = load_job_spec(args.spec, args.overrides, parse_command)
    cluster = client.connect(args.address)
    print(f"cluster: {cluster.url} (from {cluster.source})")
    if spec is not None:
        return client.submit(cluster, spec, args.submission_id, wait=not args.no_wait)
    if args.action == "resubmit":
        return client.resubmit(
            cluster, args.job_id, parse_command, args.submission_id, wait=not args.no_wait
        )
    if args.action == "logs":
        return client.logs(cluster, args.job_id, args.follow)
    if args.action == "list":
        return client.list_jobs(cluster)
    return {"status": client.status, "stop": client.stop}[args.action](cluster, args.job_id)


def _cluster(args: argparse.Namespace) -> int:
    from mmpretrain import local_cluster

    state_dir = args.dir or local_cluster.default_state_dir()
    if args.action == "up":
        info = local_cluster.up(
            state_dir, args.workers, args.cpus_per_node, None, args.dashboard_port
        )
        print(local_cluster.describe(info))
    elif args.action == "down":
        print(local_cluster.down(state_dir))
    elif args.action == "status":
        print(local_cluster.status(state_dir))
    else:
        print(local_cluster.export_lines(local_cluster.read_info(state_dir)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mmpretrain.demo import run_demo

    return _print_result(run_demo(args.runs_dir, _run_overrides(args)))


def parse_command(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as the handlers get it (also how job specs check their entrypoint)."""
    parser = build_parser()
    argv = _sweep_shorthand(list(sys.argv[1:] if argv is None else argv))
    # Overrides may follow options (`inspect DIR --strict data.x=1`), which argparse's
    # positional handling rejects; collect any key=value leftovers as overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


SWEEP_ACTIONS = ("run", "results", "-h", "--help")


def _sweep_shorthand(argv: list[str]) -> list[str]:
    """``sweep SPEC ...`` -> ``sweep run SPEC ...``: the short form READMEs, job specs and
    RayJob manifests were written with keeps working beside the real subcommands."""
    if len(argv) > 1 and argv[0] == "sweep" and argv[1] not in SWEEP_ACTIONS:
        return ["sweep", "run", *argv[1:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:  # one line, the same shape for configs, sweep and job specs
        print(f"error: {exc.located()}", file=sys.stderr)
        return 2
    except (FileNotFoundError, CheckpointError, ReportError, JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DataQualityError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except HardStopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        # `mmpretrain sweep results DIR --json | head`: the reader left, which is not an error.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell tool killed by the pipe reports
