"""Bytes of parameters, gradients and optimizer state each rank holds, per DeepSpeed ZeRO stage.

The model a preset describes is built exactly as training builds it
(``build_training_task`` + ``build_engine``: DeepSpeed around torch's AdamW, fp32 on CPU) on
``--world-size`` gloo ranks on this machine (local processes, torch.distributed ``env://`` on
127.0.0.1; no Ray). Each stage runs in a fresh set of processes, so each rank's peak RSS is that
stage's own. Each rank runs one real training step on a small random batch (the bytes of
parameters, gradients and optimizer state do not depend on the batch or the image size, so
``--batch 2 --image-size 64`` keeps it cheap) and reads DeepSpeed's own tensors, not process RSS:

- parameters, after the step. "params full" is the full-size parameter storage the rank holds:
  the module's parameters at stage 0; at stages 1-2 the flat buffer the module's parameters are
  views of; at stage 3 the parameters ZeRO-3 keeps whole on every rank (those under
  ``stage3_param_persistence_threshold``, 1e5 elements: biases, norms, small convolutions), on
  top of their slices. "params shard" is the partitioned working copy: the ``ds_tensor``
  slices at stage 3, none at stages 0-2.
- "master": the fp32 master partition ZeRO's optimizer updates and copies back into the
  working parameters (``single_partition_of_fp32_groups`` at stages 1-2,
  ``fp32_partitioned_groups_flat`` at stage 3). In fp32 training it is a second copy of this
  rank's slice (DeepSpeed 0.19 clones it even when the working copy is fp32 already); stage 0
  has none. The ZeRO paper counts it with the optimizer state; it is shown apart here so that
  the optimizer-state column is AdamW's moments alone.
- gradients, right after ``engine.backward`` and before ``engine.step`` (the step frees them):
  the module's ``.grad`` / ``.grad_accum``, at stages 1-2 ``averaged_gradients`` and
  ``grads_in_partition``, at stage 3 ``grad_partitions_flat_buffer``. Stage 0 holds the full
  all-reduced gradients there. Stages 1-2 reduce at the end of the backward pass (a gradient
  accumulation boundary) and keep only this rank's partition, so stage 1 also reads about
  G/N, below its theory of G (stage 1 does not promise to shard gradients): the full gradients
  exist only during the backward pass, until that reduction. Stage 3 reduce-scatters each
  gradient into its partition buffer as it is produced.
- optimizer state, after the step: every tensor in the torch AdamW's ``state`` (``exp_avg``,
  ``exp_avg_sq``, ``step``), which at stages 1-3 is keyed by this rank's flat fp32 partition.
- buffers: DeepSpeed's gradient-reduction staging buckets (``ipg_buckets``, sized by
  ``reduce_bucket_size``, 5e8 elements by default) allocated after the step. Not model state,
  so outside the total and the theory; on CPU only the pages written are resident.

Tensors are counted by distinct storage (a view counts its whole storage once), so padding
DeepSpeed adds for alignment is included, and two names for one storage count once.

Theory per rank, from the model's full sizes (P = fp32 parameter bytes, G = fp32 bytes of the
trainable parameters, O = 2G for AdamW's two moments, M = G for the master copy from stage 1
on): a part the stage shards is full/N (stage 1: optimizer state and master; stage 2: also
gradients; stage 3: also parameters), any other part is full.
The ratio measured/theory is printed for each sharded part, and "5%" says whether all of them
are within 5% of theory. Peak RSS is the rank process's VmHWM (its high-water mark, start-up
and the step included): training builds the whole model on every rank before DeepSpeed
partitions it (no ``deepspeed.zero.Init``), and ZeRO-2/3 allocate their reduction buckets, so
a higher stage does not lower peak RSS here even where it lowers what the rank holds.

    python benchmarks/zero_memory.py --preset tiny --stages 0,3
    python benchmarks/zero_memory.py --preset base --world-size 2 --stages 0,1,2,3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "ZERO_MEMORY_RESULT "
MB = 2**20
TOLERANCE = 0.05  # the goal: each sharded part within 5% of full/N


@dataclasses.dataclass
class RankRow:
    """One rank's bytes at one ZeRO stage, with the theory it is compared to."""

    stage: int
    rank: int
    world_size: int
    params_full: int
    params_shard: int
    master: int
    grads: int
    optim: int
    buffers: int
    theory_params: int
    theory_master: int
    theory_grads: int
    theory_optim: int
    peak_rss: int
    seconds: float

    @property
    def params(self) -> int:
        return self.params_full + self.params_shard

    @property
    def total(self) -> int:
        return self.params + self.master + self.grads + self.optim

    @property
    def theory_total(self) -> int:
        return self.theory_params + self.theory_master + self.theory_grads + self.theory_optim

    def sharded_parts(self) -> list[str]:
        """The parts this stage shards over the ranks (ZeRO paper's P_os, P_os+g, P_os+g+p);
        the fp32 master copy exists from stage 1 on, as a partition."""
        return (["optim", "master"] if self.stage >= 1 else []) + ["grads", "params"][
            : max(0, self.stage - 1)
        ]

    def ratios(self) -> dict[str, float]:
        """measured / theory for each sharded part."""
        return {
            part: getattr(self, part) / getattr(self, f"theory_{part}")
            for part in self.sharded_parts()
        }

    def within_tolerance(self) -> bool:
        return all(abs(ratio - 1.0) <= TOLERANCE for ratio in self.ratios().values())


def theory(stage: int, world_size: int, param_bytes: int, grad_bytes: int) -> dict[str, int]:
    """Per-rank bytes ZeRO promises: full/N for each part the stage shards, full otherwise."""
    optim_bytes = 2 * grad_bytes  # AdamW: exp_avg and exp_avg_sq, fp32, per trainable element
    return {
        "theory_optim": optim_bytes // world_size if stage >= 1 else optim_bytes,
        # ZeRO's fp32 master partition of the trainable parameters; stage 0 in fp32 has none.
        "theory_master": grad_bytes // world_size if stage >= 1 else 0,
        "theory_grads": grad_bytes // world_size if stage >= 2 else grad_bytes,
        "theory_params": param_bytes // world_size if stage >= 3 else param_bytes,
    }


# ---------------------------------------------------------------- inside one rank process


def _tensors(value: Any) -> Iterable[Any]:
    """Every tensor in ``value``: a tensor, a list/tuple/dict of them, or DeepSpeed's
    ``GradPartitionBufferGroup`` (a list of views with its ``flat_partition``)."""
    import torch

    if value is None:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    if getattr(value, "flat_partition", None) is not None:
        yield value.flat_partition


def storage_bytes(tensors: Iterable[Any], seen: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors``; ``seen`` (storage addresses) is
    shared between calls so that a storage already counted elsewhere is not counted again."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if storage.nbytes() == 0 or address in seen:
            continue
        seen.add(address)
        total += storage.nbytes()
    return total


def _torch_optimizer(optimizer: Any) -> Any:
    """The torch AdamW under DeepSpeed's wrappers (the ZeRO optimizer keeps it in .optimizer)."""
    while not type(optimizer).__module__.startswith("torch.optim"):
        optimizer = optimizer.optimizer
    return optimizer


def _vocab_folder(folder: Path, vocab_size: int) -> str:
    """A BERT-style vocab.txt with the preset's vocabulary size: the text heads' sizes (and so
    the parameter count) are those of a real run; the tokens themselves are never used."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(vocab_size - len(specials))]
    (folder / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    return str(folder)


def _gradient_bytes(engine: Any, stage: int) -> int:
    params = list(engine.module.parameters())
    grads = [p.grad for p in params] + [getattr(p, "grad_accum", None) for p in params]
    zero = engine.optimizer
    if stage in (1, 2):
        grads += [zero.averaged_gradients, getattr(zero, "grads_in_partition", None)]
        grads += [getattr(zero, "all_grad_tensors", None)]
        grads += [group.grad for group in zero.single_partition_of_fp32_groups]
    elif stage == 3:
        grads += [zero.grad_partitions_flat_buffer, zero.averaged_gradients]
        grads += [group.grad for group in zero.fp32_partitioned_groups_flat]
    return storage_bytes(_tensors(grads))


def _state_bytes(engine: Any, stage: int) -> dict[str, int]:
    """Parameter, optimizer-state and buffer bytes after the step (see the module docstring)."""
    zero = engine.optimizer
    seen: set[int] = set()
    params = list(engine.module.parameters())
    if stage == 3:  # whole on this rank: persistent (or still gathered) parameters only
        full = [p.data for p in params if p.data.numel() > 0]
        shard = [p.ds_tensor for p in params]
        master = list(zero.fp32_partitioned_groups_flat)  # 0 bytes if it is the shard itself
    elif stage in (1, 2):
        full, shard = params + list(zero.bit16_groups_flat), []
        master = list(zero.single_partition_of_fp32_groups)
    else:
        full, shard, master = params, [], []
    params_full = storage_bytes(_tensors(full), seen)
    params_shard = storage_bytes(_tensors(shard), seen)
    master_bytes = storage_bytes(_tensors(master), seen)
    optim = storage_bytes(_tensors(list(_torch_optimizer(engine.optimizer).state.values())), seen)
    buckets = getattr(zero, "ipg_buckets", None) or {}
    buffers = storage_bytes(_tensors([bucket.buffer for bucket in buckets.values()]))
    return {
        "params_full": params_full,
        "params_shard": params_shard,
        "master": master_bytes,
        "optim": optim,
        "buffers": buffers,
    }


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_rank(
    rank: int, world_size: int, port: int, preset: str, overrides: list[str], vocab_dir: str
) -> dict[str, Any]:
    """One rank: joins the gloo group, builds the engine as training does, runs one step."""
    import torch
    import torch.distributed as dist

    from mmpretrain.config import load_config
    from mmpretrain.data.tokenizer import load_tokenizer
    from mmpretrain.train.builder import build_training_task
    from mmpretrain.train.engine import build_engine
    from mmpretrain.train.quiet import library_prints

    started = time.perf_counter()
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size)
    cfg = load_config(preset, overrides)
    stage = cfg.train.zero_stage
    tokenizer = load_tokenizer(vocab_dir)
    torch.manual_seed(cfg.train.seed)
    task = build_training_task(cfg, tokenizer)
    # Full sizes before DeepSpeed partitions anything (ZeRO-3 empties param.data).
    param_bytes = sum(p.numel() * p.element_size() for p in task.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in task.parameters() if p.requires_grad)
    with library_prints(verbose=False):
        engine = build_engine(task, cfg)

    batch, size, length = cfg.data.batch_size, cfg.data.image_size, cfg.data.max_text_len
    generator = torch.Generator().manual_seed(rank)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
    input_ids = torch.randint(
        5, tokenizer.vocab_size, (batch, length), generator=generator, dtype=torch.long
    )
    input_ids[:, 0] = tokenizer.cls_id
    attention_mask = torch.ones_like(input_ids)

    losses = engine(images, input_ids, attention_mask)
    engine.backward(losses["loss"])
    grads = _gradient_bytes(engine, stage)
    engine.step()
    held = _state_bytes(engine, stage)
    dist.barrier()
    row = RankRow(
        stage=stage,
        rank=rank,
        world_size=world_size,
        grads=grads,
        **held,
        **theory(stage, world_size, param_bytes, grad_bytes),
        peak_rss=_peak_rss_bytes(),
        seconds=time.perf_counter() - started,
    )
    dist.destroy_process_group()
    return dataclasses.asdict(row)


# ---------------------------------------------------------------- the launcher


def stage_overrides(
    preset: str, stage: int, image_size: int, batch: int, extra: list[str] = ()
) -> list[str]:
    """The preset on CPU (fp32, as a CPU run trains) at the benchmark's small step."""
    from mmpretrain.config import load_config

    overrides = [
        f"train.zero_stage={stage}",
        "train.use_gpu=false",
        f"data.image_size={image_size}",
        f"data.batch_size={batch}",
        *extra,
    ]
    view = load_config(preset, overrides).objectives.ssl_view_size
    if view is not None and view > image_size:  # SimSiam's views are crops of the image
        overrides.append(f"objectives.ssl_view_size={max(32, image_size // 2)}")
    return overrides


def _wait_all(
    processes: list[subprocess.Popen], timeout: float, what: str, logs: list[Path]
) -> None:
    """Waits for every rank; one that fails ends the wait at once (the others would block in
    their next collective forever) with its log's tail in the error."""
    deadline = time.monotonic() + timeout
    while any(process.poll() is None for process in processes):
        for rank, process in enumerate(processes):
            if process.returncode not in (None, 0):
                tail = logs[rank].read_text()[-4000:]
                raise RuntimeError(
                    f"{what} rank {rank} failed (exit {process.returncode}):\n{tail}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: the ranks did not finish within {timeout:.0f} s")
        time.sleep(0.2)
    for rank, process in enumerate(processes):
        if process.returncode != 0 or RESULT_MARK not in logs[rank].read_text():
            tail = logs[rank].read_text()[-4000:]
            raise RuntimeError(f"{what} rank {rank} failed (exit {process.returncode}):\n{tail}")


def run_stage(
    preset: str,
    stage: int,
    world_size: int = 2,
    image_size: int = 64,
    batch: int = 2,
    extra: list[str] = (),
    timeout: float = 1800,
) -> list[RankRow]:
    """Starts ``world_size`` fresh rank processes for one stage; their rows in rank order."""
    from mmpretrain.config import load_config
    from mmpretrain.ports import free_ports

    overrides = stage_overrides(preset, stage, image_size, batch, list(extra))
    (port,) = free_ports(1)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    vocab_size = load_config(preset, overrides).data.tokenizer_vocab_size
    with tempfile.TemporaryDirectory(prefix="zero-memory-") as vocab_dir:
        _vocab_folder(Path(vocab_dir), vocab_size)  # written once, before any rank reads it
        spec = json.dumps(
            {"port": port, "preset": preset, "overrides": overrides, "vocab_dir": vocab_dir}
        )
        logs = [Path(vocab_dir) / f"rank{rank}.log" for rank in range(world_size)]
        processes = []
        for rank, log in enumerate(logs):
            command = [sys.executable, __file__, "--rank-spec", spec, "--rank", str(rank),
                       "--world-size", str(world_size)]  # fmt: skip
            with log.open("w") as sink:  # files, not pipes: a full pipe would stall a rank
                processes.append(
                    subprocess.Popen(
                        command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO
                    )
                )
        try:
            _wait_all(processes, timeout, f"stage {stage}", logs)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        rows = []
        for log in logs:
            results = [
                line for line in log.read_text().splitlines() if line.startswith(RESULT_MARK)
            ]
            rows.append(RankRow(**json.loads(results[-1][len(RESULT_MARK) :])))
    return rows


def measure(
    preset: str = "tiny",
    stages: Iterable[int] = (0, 1, 2, 3),
    world_size: int = 2,
    image_size: int = 64,
    batch: int = 2,
    extra: list[str] = (),
) -> list[RankRow]:
    """One row per (stage, rank), each stage in its own fresh processes."""
    rows: list[RankRow] = []
    for stage in stages:
        rows += run_stage(preset, stage, world_size, image_size, batch, extra)
    return rows


def format_table(rows: list[RankRow]) -> str:
    """One aligned plain-text table; MB = 2**20 bytes, "-" where the stage shards no such part."""
    parts = ("params", "master", "grads", "optim")
    head = (
        "stage", "rank", "params full", "params shard", "master", "grads", "optim", "total",
        "th params", "th master", "th grads", "th optim", "th total",
        *(f"{part}/th" for part in parts), "5%", "buffers", "peak RSS", "s",
    )  # fmt: skip
    lines = [head]
    for row in rows:
        ratios = row.ratios()
        sizes = (row.params_full, row.params_shard, row.master, row.grads, row.optim, row.total,
                 row.theory_params, row.theory_master, row.theory_grads, row.theory_optim,
                 row.theory_total)  # fmt: skip
        cells = [str(row.stage), str(row.rank), *(f"{value / MB:.1f}" for value in sizes)]
        cells += [f"{ratios[part]:.3f}" if part in ratios else "-" for part in parts]
        cells.append(("yes" if row.within_tolerance() else "no") if ratios else "-")
        cells += [f"{row.buffers / MB:.1f}", f"{row.peak_rss / MB:.0f}", f"{row.seconds:.0f}"]
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    )


def _ram_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--stages", default="0,1,2,3", help="comma-separated ZeRO stages")
    parser.add_argument("--image-size", type=int, default=64, help="small: memory is per model")
    parser.add_argument("--batch", type=int, default=2, help="samples per rank in the one step")
    parser.add_argument("--rank-spec", default=None, help=argparse.SUPPRESS)  # rank entry
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_spec is not None:
        spec = json.loads(args.rank_spec)
        row = measure_rank(args.rank, args.world_size, spec["port"], spec["preset"],
                           spec["overrides"], spec["vocab_dir"])  # fmt: skip
        print(RESULT_MARK + json.dumps(row), flush=True)
        return

    stages = [int(stage) for stage in args.stages.split(",")]
    started = time.perf_counter()
    rows = measure(args.preset, stages, args.world_size, args.image_size, args.batch)
    print(
        f"preset {args.preset}, {args.world_size} gloo ranks on CPU, fp32, AdamW, one step at "
        f"batch {args.batch} x {args.image_size} px; {os.cpu_count()} CPUs, "
        f"{_ram_gb():.0f} GB RAM, {platform.machine()}; MB = 2^20 bytes; th = theory (full/N "
        f"for the parts the stage shards); s = a rank's seconds from joining the group to the "
        f"end of its step; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
