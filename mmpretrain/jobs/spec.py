"""Job specs (``jobs/*.yaml``): what ``mmpretrain job submit`` sends to a cluster's Jobs API.

A spec picks an ``mmpretrain`` command line and the environment it runs in; it holds no logic
of its own. Everything that can be checked is checked here, before anything is sent: the
spec's keys, the entrypoint's command and its config (with the overrides typed on submit), so
a typo costs a second rather than a job that fails on the cluster minutes later.

A job's entrypoint runs in Ray's copy of ``working_dir``, in a folder named after the upload;
a relative ``train.storage_path`` would put the run there, where a resubmitted job (a new
upload, a new folder) could not find it to resume. Job specs therefore need an absolute path
or an object-store URI for it.
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpretrain.config import (
    COMMAND_LINE,
    ConfigError,
    RunConfig,
    TrainConfig,
    doc,
    load_config,
    parse_overrides,
)
from mmpretrain.config.load import read_yaml_mapping
from mmpretrain.config.overrides import override_keys
from mmpretrain.config.schema import build, require

if TYPE_CHECKING:
    from mmpretrain.sweep.spec import SweepSpec

# Commands that take run-config overrides, and so a train.stop_grace_s.
CONFIG_COMMANDS = ("train", "demo")
JOB_COMMANDS = ("train", "demo", "sweep", "eval", "export")
# Added to the stop grace for the job supervisor: the driver still has to exit after the
# checkpoint, and a Ray it started has to shut down.
SUPERVISOR_MARGIN_S = 30
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"  # read by Ray's job supervisor (see below)
METADATA_PREFIX = "mmpretrain."


class JobSpecError(ConfigError):
    """A job spec or submit override that would fail on the cluster; says which key."""


# What `mmpretrain job` needs from the CLI to check an entrypoint: its own parser, so the
# grammar lives in one place (cli.py) and a spec cannot drift from what the job will run.
ParseCommand = Callable[[Sequence[str]], argparse.Namespace]


@dataclass
class RuntimeEnvSection:
    working_dir: str | None = doc(
        "Folder uploaded as the job's working directory, read relative to the spec; null when "
        "the nodes have mmpretrain installed.",
        default=None,
    )
    excludes: list[str] = doc(
        "Paths left out of the upload, read by Ray as .gitignore lines: anchor a name with a "
        "leading '/' or it is dropped at every depth.",
        default_factory=list,
    )
    pip: list[str] = doc("Packages Ray installs for the job.", default_factory=list)
    env_vars: dict[str, str] = doc(
        "Environment of the job; no tokens, and no stop wait (derived from stop_grace_s).",
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        for key in self.env_vars:
            require(
                "TOKEN" not in key.upper(),
                f"runtime_env.env_vars.{key}",
                "a token does not belong in a job spec (it would be stored with the job); "
                "the cluster's nodes hold their own",
            )
            require(
                key != STOP_WAIT_ENV,
                f"runtime_env.env_vars.{key}",
                "set stop_grace_s instead; the wait is derived from it",
            )


@dataclass
class EntrypointResourcesSection:
    num_cpus: float | None = doc("CPUs the job's driver process holds; null = Ray's.", default=None)
    num_gpus: float | None = doc("GPUs the job's driver process holds.", default=None)
    memory: int | None = doc("Memory in bytes the job's driver process holds.", default=None)
    resources: dict[str, float] | None = doc(
        "Custom Ray resources the job's driver process holds.", default=None
    )

    def to_dict(self) -> dict[str, Any]:
        """What the spec set, as the Jobs API's entrypoint_* arguments take it."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass
class JobFile:
    """A job spec as written (``jobs/*.yaml``), checked by the config's schema engine."""

    name: str = doc(
        "A short name, shown by `mmpretrain job list`; empty = the spec's file name.", default=""
    )
    description: str = doc("What the job is for.", default="")
    entrypoint: str = doc(
        f"An `mmpretrain` command line ({', '.join(JOB_COMMANDS)}); overrides typed on "
        "submit are appended.",
        default="",
    )
    runtime_env: RuntimeEnvSection = field(default_factory=RuntimeEnvSection)
    entrypoint_resources: EntrypointResourcesSection = field(
        default_factory=EntrypointResourcesSection
    )
    metadata: dict[str, str] = doc(
        f"String labels kept with the job (keys starting {METADATA_PREFIX!r} are ours).",
        default_factory=dict,
    )
    stop_grace_s: float = doc(
        "Seconds a stop may take to write its checkpoint (passed on as train.stop_grace_s).",
        default=TrainConfig.__dataclass_fields__["stop_grace_s"].default,
    )

    def __post_init__(self) -> None:
        require(
            bool(self.entrypoint.strip()),
            "entrypoint",
            "required, an `mmpretrain ...` command line",
        )
        clashing = [key for key in self.metadata if key.startswith(METADATA_PREFIX)]
        require(
            not clashing,
            f"metadata.{clashing[0] if clashing else ''}",
            f"keys starting {METADATA_PREFIX!r} are ours",
        )
        require(
            self.stop_grace_s > 0,
            "stop_grace_s",
            f"must be a number of seconds > 0; got {self.stop_grace_s:g}",
        )


@dataclass(frozen=True)
class JobSpec:
    path: Path  # the spec file; relative paths in it are read from its folder
    text: str  # the spec as written, kept with the job so `job resubmit` sends it again
    name: str
    entrypoint: list[str]  # argv, without the overrides typed on submit
    overrides: list[str]  # typed on submit, appended to the entrypoint
    stop_grace_s: float
    working_dir: Path | None
    excludes: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def command(self) -> str:
        return self.entrypoint[1]

    def command_line(self) -> str:
        """The shell line the job supervisor runs: entrypoint + overrides + the stop grace."""
        argv = [*self.entrypoint, *self.overrides]
        if self.command in CONFIG_COMMANDS:
            argv.append(f"train.stop_grace_s={self.stop_grace_s:g}")
        return shlex.join(argv)

    def runtime_env(self) -> dict[str, Any]:
        """Ray's runtime_env. The stop wait goes into env_vars because Ray's job supervisor
        reads RAY_JOB_STOP_WAIT_TIME_S from its own environment, which the job's env_vars
        reach (its default, 3 s, would SIGKILL a run mid-checkpoint)."""
        env_vars = {
            **self.env_vars,
            STOP_WAIT_ENV: str(math.ceil(self.stop_grace_s) + SUPERVISOR_MARGIN_S),
        }
        runtime_env: dict[str, Any] = {"env_vars": env_vars}
        if self.working_dir is not None:
            runtime_env["working_dir"] = str(self.working_dir)
            runtime_env["excludes"] = list(self.excludes)
        if self.pip:
            runtime_env["pip"] = list(self.pip)
        return runtime_env

    def job_metadata(self, overrides: Sequence[str] | None = None) -> dict[str, str]:
        """The spec's labels plus what `job resubmit` needs to send the same job again."""
        return {
            **self.metadata,
            f"{METADATA_PREFIX}name": self.name,
            f"{METADATA_PREFIX}spec": str(self.path),
            f"{METADATA_PREFIX}spec_yaml": self.text,
            f"{METADATA_PREFIX}overrides": shlex.join(
                self.overrides if overrides is None else overrides
            ),
            f"{METADATA_PREFIX}stop_grace_s": f"{self.stop_grace_s:g}",
        }


def load_job_spec(
    path: str | Path, overrides: Sequence[str], parse: ParseCommand, text: str | None = None
) -> JobSpec:
    """Reads ``path`` (or ``text``, a copy kept with an earlier job) and checks it whole. An
    error names the spec file, or the command line where the bad key was typed there."""
    spec_path = Path(path).resolve()
    if text is None:
        if not spec_path.is_file():
            raise JobSpecError(f"job spec {str(path)!r} does not exist")
        text = spec_path.read_text()
    raw = read_yaml_mapping(spec_path, "job spec", JobSpecError, text)
    try:
        spec = _parse(raw, spec_path, text, list(overrides))
        _check_entrypoint(spec, parse)
    except ConfigError as exc:
        raise exc.as_kind(JobSpecError).at(str(path)) from None
    return spec


def _parse(raw: dict[str, Any], path: Path, text: str, overrides: list[str]) -> JobSpec:
    job: JobFile = build(JobFile, raw)
    entrypoint = shlex.split(job.entrypoint)
    if entrypoint[0] != "mmpretrain" or len(entrypoint) < 2:
        raise JobSpecError(
            "must be an `mmpretrain` command line (the jobs hold no logic of their "
            f"own); got {job.entrypoint!r}",
            "entrypoint",
        )
    if entrypoint[1] not in JOB_COMMANDS:
        raise JobSpecError(
            f"got `mmpretrain {entrypoint[1]}`, which is not a job command; allowed: "
            f"{', '.join(JOB_COMMANDS)}",
            "entrypoint",
        )
    bad = [item for item in overrides if "=" not in item or item.startswith("-")]
    if bad:
        raise JobSpecError(f"submit overrides must be key.path=value; got {bad}", file=COMMAND_LINE)
    env = job.runtime_env
    working_dir = None
    if env.working_dir is not None:
        working_dir = (path.parent / env.working_dir).resolve()
        if not working_dir.is_dir():
            raise JobSpecError(
                f"{str(working_dir)!r} (read relative to the spec) is not a folder; use null "
                "when the nodes have mmpretrain installed",
                "runtime_env.working_dir",
            )
        _refuse_excludes_that_drop_the_package(env.excludes, working_dir)
    return JobSpec(
        path=path,
        text=text,
        name=job.name or path.stem,
        entrypoint=entrypoint,
        overrides=overrides,
        stop_grace_s=job.stop_grace_s,
        working_dir=working_dir,
        excludes=env.excludes,
        pip=env.pip,
        env_vars=env.env_vars,
        resources=job.entrypoint_resources.to_dict(),
        metadata=job.metadata,
        description=job.description,
    )


def _refuse_excludes_that_drop_the_package(excludes: Sequence[str], working_dir: Path) -> None:
    """Ray matches ``excludes`` as .gitignore lines, so a pattern without a slash (``data/``)
    drops that name at every depth: ``mmpretrain/data/`` too, and the job then fails at import
    on the cluster with ``No module named 'mmpretrain.data'``. Caught here, before the upload."""
    package = working_dir / "mmpretrain"
    if not package.is_dir():
        return
    for pattern in excludes:
        name = pattern.rstrip("/")
        if not name or "/" in name:
            continue  # anchored or a path: matches relative to working_dir only
        files = (p for p in sorted(package.rglob("*")) if "__pycache__" not in p.parts)
        hit = next((p for p in files if fnmatch(p.name, name)), None)
        if hit is not None:
            raise JobSpecError(
                f"{pattern!r} also drops {hit.relative_to(working_dir).as_posix()} from the "
                "upload (Ray reads excludes as .gitignore lines); anchor it to working_dir with a "
                f"leading slash: '/{pattern}'",
                "runtime_env.excludes",
            )


def _check_entrypoint(spec: JobSpec, parse: ParseCommand) -> None:
    """Loads what the job will load, here: its config, or its sweep spec, with the overrides.

    A bad key in the entrypoint's own overrides is the spec's (``entrypoint: <key>: ...``);
    one in the overrides typed on submit stays the command line's."""
    grace = [f"train.stop_grace_s={spec.stop_grace_s:g}"] if spec.command in CONFIG_COMMANDS else []
    try:
        check_command([*spec.entrypoint, *spec.overrides], parse, grace, spec.working_dir)
    except ConfigError as exc:
        typed = override_keys(parse_overrides(spec.overrides))
        if exc.file != COMMAND_LINE or exc.key in typed:
            raise
        raise JobSpecError(str(exc), "entrypoint") from None


def check_command(
    argv: Sequence[str],
    parse: ParseCommand,
    extra_overrides: Sequence[str] = (),
    base_dir: Path | None = None,
) -> RunConfig | SweepSpec | None:
    """Loads what an ``mmpretrain`` command line run on a cluster will load, here, and returns
    it: the run config (train, demo, eval), the sweep spec (sweep), or None (export).

    Shared by job specs and the Kubernetes manifests' RayJob entrypoints (tests/unit/test_k8s.py),
    so both are held to what the CLI itself accepts. ``extra_overrides`` go after the command
    line's own; a relative sweep spec path is read from ``base_dir`` (the job's working_dir).
    """
    if not argv or argv[0] != "mmpretrain":
        raise JobSpecError(f"entrypoint: must be an `mmpretrain` command line; got {argv!r}")
    try:
        args = parse(argv[1:])
    except SystemExit as exc:  # argparse has printed its usage line
        raise JobSpecError(f"entrypoint: {shlex.join(argv)} does not parse") from exc
    overrides = [*getattr(args, "overrides", []), *extra_overrides]
    if args.command == "sweep" and args.action == "results":
        return None  # reads a finished sweep's folder; nothing to load beforehand
    if args.command == "sweep":
        from mmpretrain.sweep.spec import load_spec

        sweep_spec = Path(args.spec)
        if not sweep_spec.is_absolute() and base_dir is not None:
            sweep_spec = base_dir / sweep_spec  # where the job will read it
        return load_spec(sweep_spec, overrides)
    if args.command == "export":
        return None
    # eval reads its config from the checkpoint; its overrides are checked against a preset.
    cfg = load_config(getattr(args, "config", "tiny") or "tiny", overrides)
    storage = cfg.train.storage_path
    if args.command in CONFIG_COMMANDS and "://" not in storage and not Path(storage).is_absolute():
        raise JobSpecError(
            f"train.storage_path={storage!r}: a job needs an absolute path every node mounts, or "
            "an object-store URI; a relative one lands in Ray's copy of working_dir, where a "
            "resubmitted job cannot find the run to resume it"
        )
    return cfg
