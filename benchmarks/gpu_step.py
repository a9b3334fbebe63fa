"""How well one device is used: the full pretraining step's throughput, FLOPs and MFU by batch
size, the fused step against its two towers alone, the speed switches, and one real training
run fed by the machine's CPUs.

On a GPU node (H100/H200; about 5 minutes, single process, no DeepSpeed in sections 1-3):

    python benchmarks/gpu_step.py

On CPU (what the smoke test runs; fp32, tiny sizes):

    python benchmarks/gpu_step.py --preset tiny --batches 2,4 --skip-compile --run-steps 10

The device is cuda when there is one, else cpu (``--device`` forces it). Sections of the table:

1. ``task``: the preset's full pretraining task, built as training builds it (``load_config``,
   a tokenizer with BERT's 30522 word pieces, ``build_training_task``), bf16 autocast on GPU
   (fp32 on CPU) and the engine's AdamW, per batch size until the first out-of-memory. FLOPs
   per sample are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward +
   backward (model FLOPs: activation-checkpointing recompute is not counted); TFLOP/s is FLOPs
   per sample x samples/s; MFU is that over the GPU's dense bf16 spec peak and over the peak a
   large matmul measured here reaches.
2. ``towers``: at one batch, the vision tower alone (ResNet + its ITC projection, contrastive
   loss against fixed random text embeddings) and the text tower alone (BERT + its MLM head and
   loss), from the same model classes; "combined" is 1/(1/a + 1/b), the rate of one device
   running both back to back; the fused task's rate over it.
3. ``switch``: at that batch, all switches off, then each of ``train.channels_last``,
   ``train.activation_checkpointing``, ``train.compile`` (torch.compile of the task) and
   ``optim.fused`` (fused AdamW) on alone.
4. ``run``: ``python -m mmpretrain train`` as a user runs it, one worker, on synthetic shards
   written here; samples/s and the data-wait share from the run's own ``metrics.jsonl`` (rank 0's
   ``data_wait_s`` / ``step_s``, the training loop's clock), log rows after the first.

Prints one table; the goals (GPU only) are in the last column. Record it in
benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from _common import (
    bert_sized_tokenizer,
    build_task,
    cli_env,
    random_pairs,
    seconds_per_step,
    synchronize,
    temporary_tokenizer,
    training_step,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmpretrain.config import RunConfig, load_config
from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.data.tokenizer import CaptionTokenizer
from mmpretrain.model.fused import MLMHead
from mmpretrain.model.objectives import itc_loss, mlm_loss
from mmpretrain.train.engine import build_optimizer

# Dense (no sparsity) bf16 tensor-core peaks from the vendor's data sheets, in TFLOP/s, keyed on
# a part of torch.cuda.get_device_name(); the first match wins, None = not in the table.
SPEC_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", None),  # a different clock and power limit; not in the table
    ("H200 NVL", None),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40", None),  # "L4" would match it
    ("L4", 121.0),
)
GOAL_MFU = 0.35  # at the best batch
GOAL_FUSED_RATIO = 0.8  # fused rate over the towers' combined rate
GOAL_DATA_WAIT = 0.05  # share of the real run's step time spent waiting for a batch
SWITCHES: dict[str, list[str]] = {
    "baseline (all off)": [],
    "+ channels_last": ["train.channels_last=true"],
    "+ activation_checkpointing": ["train.activation_checkpointing=true"],
    "+ compile": ["train.compile=true"],
    "+ fused AdamW": ["optim.fused=true"],
}
ALL_OFF = [
    "train.channels_last=false",
    "train.activation_checkpointing=false",
    "train.compile=false",
    "optim.fused=false",
]


@dataclass
class Row:
    """One line of the table; None prints as blank."""

    section: str
    name: str
    batch: int | None = None
    samples_per_s: float | None = None
    peak_mb: float | None = None
    flops_per_sample: float | None = None
    tflops: float | None = None
    mfu_spec: float | None = None
    mfu_measured: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.samples_per_s is not None


@dataclass
class Machine:
    device: str
    name: str  # the GPU's name, or the CPU's
    spec_tflops: float | None  # dense bf16 data-sheet peak; None on CPU or an unknown GPU
    measured_tflops: float  # large-matmul peak measured here (bf16 on GPU, fp32 on CPU)
    cores: int

    def fill_rates(self, row: Row) -> Row:
        """TFLOP/s and the two MFUs of a row from its FLOPs per sample and samples/s."""
        if row.ok and row.flops_per_sample:
            row.tflops = row.flops_per_sample * row.samples_per_s / 1e12
            row.mfu_measured = row.tflops / self.measured_tflops
            row.mfu_spec = row.tflops / self.spec_tflops if self.spec_tflops else None
        return row


def spec_peak(device_name: str) -> float | None:
    for part, tflops in SPEC_BF16_TFLOPS:
        if part in device_name:
            return tflops
    return None


def matmul_peak_tflops(device: str, size: int, iters: int) -> float:
    """What this device's matmuls reach on one large square product: bf16 on GPU, fp32 on CPU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    synchronize(device)
    return 2 * size**3 * iters / (time.perf_counter() - start) / 1e12


def describe_machine(device: str, matmul_size: int, matmul_iters: int) -> Machine:
    if device == "cuda":
        name = torch.cuda.get_device_name()
        spec = spec_peak(name)
    else:
        name = _cpu_name()
        spec = None
    return Machine(
        device,
        name,
        spec,
        matmul_peak_tflops(device, matmul_size, matmul_iters),
        len(os.sched_getaffinity(0)),
    )


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


class _RssPeak:
    """Peak resident memory of this process while the block runs (warm-up and timed steps),
    sampled every 20 ms: a CPU has no allocator counter to reset, and ru_maxrss only grows."""

    def __init__(self) -> None:
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._done.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            self._done.wait(0.02)

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


# --- what one step trains -------------------------------------------------------------------


class VisionTower(nn.Module):
    """The task's ResNet with its ITC projection and temperature, and nothing else; fixed
    random unit vectors stand in for the text tower's embeddings of the batch."""

    def __init__(self, task: nn.Module, batch: int, embed_dim: int):
        super().__init__()
        encoder = task.encoder
        self.vision, self.image_proj = encoder.vision, encoder.image_proj
        self.temperature = encoder.temperature
        targets_BE = torch.randn(batch, embed_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("text_emb_BE", F.normalize(targets_BE, dim=-1), persistent=False)

    def forward(self, images_BHWC: torch.Tensor) -> torch.Tensor:
        image_BND = self.vision(images_BHWC)
        image_emb_BE = F.normalize(self.image_proj(image_BND[:, 0]), dim=-1)
        return itc_loss(image_emb_BE, self.text_emb_BE.to(image_emb_BE.dtype), self.temperature())


class TextTower(nn.Module):
    """The task's BERT with its text-only MLM head and BERT masking, and nothing else."""

    def __init__(self, task: nn.Module, probability: float):
        super().__init__()
        encoder = task.encoder
        self.text = encoder.text
        self.tokens = encoder.tokens
        head = task.text_mlm_head  # None when the preset turns text-only MLM off
        self.head = (
            head if head is not None else MLMHead(encoder.text.width, encoder.tokens.vocab_size)
        )
        self.probability = probability

    def forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        masked_BL, labels_BL = self.tokens.mask(input_ids_BL, attention_mask_BL, self.probability)
        return mlm_loss(self.head(self.text(masked_BL, attention_mask_BL)), labels_BL)


def _module_and_loss(
    what: str, cfg: RunConfig, tokenizer: CaptionTokenizer, batch: int, device: str
) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """``task``, ``vision`` or ``text``: the module to train and its loss on a random batch.

    A tower is cut from a task built on the CPU, so only its own parameters reach the device.
    """
    images, ids, mask = random_pairs(cfg, tokenizer, batch, device)
    if what == "task":
        task = build_task(cfg, tokenizer, device)
        if cfg.train.compile:
            task.compile()  # what DeepSpeed's engine.compile() does to the module
        return task, lambda: task(images, ids, mask)["loss"]
    whole = build_task(cfg, tokenizer, "cpu")
    if what == "vision":
        vision = VisionTower(whole, batch, cfg.model.embed_dim).to(device)
        return vision, lambda: vision(images)
    text = TextTower(whole, cfg.objectives.mlm_probability).to(device)
    return text, lambda: text(ids, mask)


def count_flops(loss_of: Callable[[], torch.Tensor], device: str, bf16: bool) -> float:
    """FLOPs of one forward + backward (matmuls, convolutions and attention, as PyTorch counts
    them; elementwise work is not counted, as in the usual MFU)."""
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        loss.backward()
    return float(counter.get_total_flops())


def measure(
    section: str,
    name: str,
    what: str,
    cfg: RunConfig,
    tokenizer: CaptionTokenizer,
    batch: int,
    device: str,
    *,
    warmup: int,
    iters: int,
    flops: bool,
) -> Row:
    """One row: steady-state samples/s and peak memory of ``what`` training at ``batch``, and
    (with ``flops``) its FLOPs per sample. A CUDA out-of-memory gives a row noted "OOM"."""
    bf16 = device == "cuda"
    row = Row(section, name, batch)
    out_of_memory = False
    try:
        module, loss_of = _module_and_loss(what, cfg, tokenizer, batch, device)
        optimizer = build_optimizer(module, cfg)
        step = training_step(module, loss_of, optimizer, device, bf16)
        with contextlib.ExitStack() as stack:
            rss = stack.enter_context(_RssPeak()) if device == "cpu" else None
            seconds = seconds_per_step(step, device, warmup=warmup, iters=iters)
        row.samples_per_s = batch / seconds
        row.peak_mb = torch.cuda.max_memory_allocated() / 2**20 if rss is None else rss.peak / 2**20
        if flops:
            optimizer.zero_grad(set_to_none=True)
            row.flops_per_sample = count_flops(loss_of, device, bf16) / batch
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True  # cleaned up below, once the exception's frames are gone
    module = loss_of = optimizer = step = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if out_of_memory:
        row.note = "OOM"
    return row


# --- the four sections ------------------------------------------------------------------------


def task_rows(
    cfg: RunConfig,
    tokenizer: CaptionTokenizer,
    batches: list[int],
    machine: Machine,
    *,
    warmup: int,
    iters: int,
) -> list[Row]:
    """Section 1: the full task at each batch size, stopping at the first out-of-memory."""
    rows = []
    for batch in batches:
        row = measure(
            "task",
            "full pretraining task",
            "task",
            cfg,
            tokenizer,
            batch,
            machine.device,
            warmup=warmup,
            iters=iters,
            flops=True,
        )
        rows.append(machine.fill_rates(row))
        if not row.ok:
            break
    measured = [row for row in rows if row.ok]
    if measured:
        best = max(measured, key=lambda row: row.samples_per_s)
        best.note = "best batch"
        if machine.device == "cuda" and best.mfu_spec is not None:
            best.note += f"; goal MFU >= {GOAL_MFU:.0%}: {_met(best.mfu_spec >= GOAL_MFU)}"
    return rows


def tower_rows(
    cfg: RunConfig,
    tokenizer: CaptionTokenizer,
    batch: int,
    fused: Row,
    machine: Machine,
    *,
    warmup: int,
    iters: int,
) -> list[Row]:
    """Section 2: each tower alone at ``batch``, their back-to-back rate, and the fused task's
    rate over it (``fused``: the task's row at the same batch)."""
    towers = [
        measure(
            "towers",
            name,
            what,
            cfg,
            tokenizer,
            batch,
            machine.device,
            warmup=warmup,
            iters=iters,
            flops=True,
        )
        for name, what in (("vision tower + ITC", "vision"), ("text tower + MLM", "text"))
    ]
    rows = [machine.fill_rates(row) for row in towers]
    if all(row.ok for row in towers) and fused.ok:
        vision, text = (row.samples_per_s for row in towers)
        combined = 1 / (1 / vision + 1 / text)
        ratio = fused.samples_per_s / combined
        note = f"fused / combined = {ratio:.2f}x"
        if machine.device == "cuda":
            note += f"; goal >= {GOAL_FUSED_RATIO}x: {_met(ratio >= GOAL_FUSED_RATIO)}"
        rows.append(
            Row(
                "towers",
                "towers combined (1/(1/a+1/b))",
                batch,
                combined,
                extra={"vision": vision, "text": text},
            )
        )
        rows.append(
            Row(
                "towers",
                "fused task",
                batch,
                fused.samples_per_s,
                fused.peak_mb,
                fused.flops_per_sample,
                fused.tflops,
                fused.mfu_spec,
                fused.mfu_measured,
                note,
                extra={"ratio": ratio, "combined": combined},
            )
        )
    return rows


def switch_rows(
    preset: str,
    overrides: list[str],
    tokenizer: CaptionTokenizer,
    batch: int,
    flops_per_sample: float | None,
    machine: Machine,
    *,
    warmup: int,
    iters: int,
    skip_compile: bool,
) -> list[Row]:
    """Section 3: every switch off, then each on alone, at ``batch``. The model FLOPs are the
    task's (no switch changes what is computed), so checkpointing's recompute is not counted."""
    rows: list[Row] = []
    for name, switch in SWITCHES.items():
        if skip_compile and "train.compile=true" in switch:
            continue
        cfg = load_config(preset, [*overrides, *ALL_OFF, *switch])
        compiled = cfg.train.compile
        row = measure(
            "switch",
            name,
            "task",
            cfg,
            tokenizer,
            batch,
            machine.device,
            warmup=warmup + (2 if compiled else 0),  # the first compiled steps compile
            iters=iters,
            flops=False,
        )
        row.flops_per_sample = flops_per_sample
        machine.fill_rates(row)
        if row.ok and rows and rows[0].ok:
            row.note = f"{row.samples_per_s / rows[0].samples_per_s:.2f}x baseline"
        rows.append(row)
    return rows


def run_row(
    preset: str,
    overrides: list[str],
    machine: Machine,
    *,
    steps: int,
    batch: int | None,
    log_every: int,
    image_side: int,
    flops_per_sample: float | None,
) -> Row:
    """Section 4: a real ``mmpretrain train`` (embedded Ray, one worker, DeepSpeed as the
    preset sets it) on synthetic shards; its samples/s and data-wait share as it recorded them.
    """
    gpu = machine.device == "cuda"
    cfg = load_config(preset, overrides)
    batch = batch or cfg.data.batch_size
    with tempfile.TemporaryDirectory(prefix="mmpretrain-gpu-step-") as folder:
        root = Path(folder)
        # One epoch's worth, so no epoch boundary (a pipeline restart) falls inside the run.
        write_synthetic_shards(
            root / "train", steps * batch + batch, shard_size=256, image_side=image_side
        )
        bert_sized_tokenizer(root / "tokenizer")
        command = [
            sys.executable, "-m", "mmpretrain", "train", "--config", preset, *overrides,
            f"train.use_gpu={str(gpu).lower()}", "train.num_workers=1",
            f"data.train={root / 'train'}", f"data.tokenizer={root / 'tokenizer'}",
            f"data.batch_size={batch}", f"train.max_steps={steps}",
            f"train.log_every={log_every}", f"checkpoint.every={steps}",
            f"optim.warmup_steps={min(steps, 10)}", f"train.storage_path={root / 'runs'}",
            "train.run_name=gpu-step", "observe.metrics_port=null",
        ]  # fmt: skip
        done = subprocess.run(command, env=cli_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        lines = (root / "runs" / "gpu-step" / "metrics.jsonl").read_text().splitlines()
    return machine.fill_rates(
        run_summary([json.loads(line) for line in lines], batch, flops_per_sample, gpu)
    )


def run_summary(log_rows: list[dict], batch: int, flops_per_sample: float | None, gpu: bool) -> Row:
    """samples/s and data-wait share over the log rows after the first (which holds Ray Data's
    and the first step's start-up)."""
    if len(log_rows) < 2:
        raise ValueError("the run wrote fewer than 2 log rows; raise --run-steps")
    first, steady = log_rows[0], log_rows[1:]
    last = steady[-1]
    rate = (last["samples_seen"] - first["samples_seen"]) / (last["time"] - first["time"])
    wait = sum(row["data_wait_s"] for row in steady)
    step = sum(row["step_s"] for row in steady)
    share = wait / step
    note = f"data wait {share:.1%} of step time"
    if gpu:
        note += f"; goal < {GOAL_DATA_WAIT:.0%}: {_met(share < GOAL_DATA_WAIT)}"
    return Row(
        "run",
        "mmpretrain train, 1 worker",
        batch,
        rate,
        flops_per_sample=flops_per_sample,
        note=note,
        extra={"data_wait_share": share, "steps": last["step"]},
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --- the table -----------------------------------------------------------------------------

COLUMNS = (
    ("section", 7, "<"),
    ("row", 30, "<"),
    ("batch", 6, ">"),
    ("samples/s", 10, ">"),
    ("peak MB", 9, ">"),
    ("GFLOP/sample", 13, ">"),
    ("TFLOP/s", 9, ">"),
    ("MFU spec", 9, ">"),
    ("MFU meas", 9, ">"),
    ("note", 0, "<"),
)


def rate(value: float | None) -> str:
    """At least three significant digits (0.532, 2.91, 12.3, 1234): ratios of printed rates
    stay within a percent of the printed ratios."""
    if value is None:
        return ""
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value) or 1)))}f}"


def format_table(header: str, rows: list[Row]) -> str:
    def cell(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    lines = [header, "  ".join(f"{name:{align}{width}}" for name, width, align in COLUMNS)]
    for row in rows:
        cells = (
            row.section,
            row.name,
            cell(row.batch, "d"),
            rate(row.samples_per_s),
            cell(row.peak_mb, ".0f"),
            cell(row.flops_per_sample and row.flops_per_sample / 1e9, ".2f"),
            cell(row.tflops, ".3g"),
            cell(row.mfu_spec, ".1%"),
            cell(row.mfu_measured, ".1%"),
            row.note,
        )
        lines.append(
            "  ".join(
                f"{text:{align}{width}}"
                for text, (_, width, align) in zip(cells, COLUMNS, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def header_line(machine: Machine, preset: str, precision: str) -> str:
    spec = f"{machine.spec_tflops:g}" if machine.spec_tflops else "-"
    dtype = "bf16" if machine.device == "cuda" else "fp32"
    return (
        f"device {machine.device} ({machine.name}), torch {torch.__version__}, preset {preset}, "
        f"precision {precision}, {machine.cores} CPU cores (torch threads: "
        f"{torch.get_num_threads()}); peak TFLOP/s: spec dense bf16 {spec}, "
        f"measured {machine.measured_tflops:.3g} ({dtype} matmul)"
    )


def run_benchmark(args: argparse.Namespace) -> tuple[Machine, list[Row]]:
    """Every section, as ``main`` prints them; the rows are what the smoke test checks."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in (args.batches or ("32,64,128,256" if gpu else "4,8")).split(",")]
    matmul_size = args.matmul_size or (8192 if gpu else 1024)
    machine = describe_machine(device, matmul_size, 50 if gpu else 5)
    warmup, iters = args.warmup, args.iters or (10 if gpu else 2)
    cfg = load_config(args.preset, args.set)
    tokenizer = temporary_tokenizer()

    rows = task_rows(cfg, tokenizer, batches, machine, warmup=warmup, iters=iters)
    fitted = [row for row in rows if row.ok]
    if not fitted:
        return machine, rows
    best = max(fitted, key=lambda row: row.samples_per_s)
    batch = args.switch_batch or best.batch
    at_batch = next((row for row in fitted if row.batch == batch), None)
    if at_batch is None:  # a --switch-batch outside --batches: measure the task there too
        at_batch = machine.fill_rates(
            measure(
                "task",
                "full pretraining task",
                "task",
                cfg,
                tokenizer,
                batch,
                device,
                warmup=warmup,
                iters=iters,
                flops=True,
            )
        )
        rows.append(at_batch)
    rows += tower_rows(cfg, tokenizer, batch, at_batch, machine, warmup=warmup, iters=iters)
    rows += switch_rows(
        args.preset,
        args.set,
        tokenizer,
        batch,
        at_batch.flops_per_sample,
        machine,
        warmup=warmup,
        iters=iters,
        skip_compile=args.skip_compile,
    )
    run_steps = args.run_steps if args.run_steps is not None else (200 if gpu else 10)
    if run_steps > 0:
        if gpu:
            torch.cuda.empty_cache()  # the run's worker shares this GPU
        rows.append(
            run_row(
                args.preset,
                args.set,
                machine,
                steps=run_steps,
                batch=args.run_batch,
                log_every=args.run_log_every or max(1, run_steps // 10),
                image_side=args.image_side,
                flops_per_sample=at_batch.flops_per_sample,
            )
        )
    return machine, rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every section, e.g. model.fusion.type=merged",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help="default: cuda if available, else cpu",
    )
    parser.add_argument("--batches", default=None, help="default 32,64,128,256 on GPU, 4,8 on CPU")
    parser.add_argument(
        "--switch-batch",
        type=int,
        default=None,
        help="batch of the towers and switches (default: the best batch)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=None, help="timed steps (10 GPU, 2 CPU)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--matmul-size", type=int, default=None, help="8192 GPU, 1024 CPU")
    parser.add_argument(
        "--run-steps",
        type=int,
        default=None,
        help="steps of the real run (200 GPU, 10 CPU); 0 skips it",
    )
    parser.add_argument("--run-batch", type=int, default=None, help="default: the preset's")
    parser.add_argument("--run-log-every", type=int, default=None)
    parser.add_argument("--image-side", type=int, default=256, help="synthetic JPEGs' side")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    machine, rows = run_benchmark(args)
    precision = "bf16 autocast" if machine.device == "cuda" else "fp32"
    print(format_table(header_line(machine, args.preset, precision), rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
