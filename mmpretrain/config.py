"""One typed config object describes a run end to end.

Order of precedence, lowest first: dataclass defaults, a YAML preset (shipped name or path), then
dotted command-line overrides (``train.max_steps=50``). Unknown keys and bad values raise
``ConfigError`` naming the dotted key and what is allowed, before anything touches Ray, so a typo
never costs a cluster start-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.storage import Folder, is_uri

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config key or value a user has to fix; the message names the key."""


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose one-line description travels with it (shown by ``config show``)."""
    return field(metadata={"doc": text}, **kwargs)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _choice(value: Any, key: str, allowed: typing.Iterable[Any]) -> None:
    allowed = list(allowed)
    _require(value in allowed, key, f"got {value!r}; allowed values are {allowed}")


CAPTION_SOURCES = ("txt", "json", "cls")
CROPS = ("center", "random_resized")
MIN_VOCAB = 100  # special tokens plus an alphabet; WordPiece needs room for word pieces


@dataclass
class SourceConfig:
    train: str = doc("Shard pattern of this source.", default="")
    weight: float = doc("Relative share of training shards drawn from this source.", default=1.0)

    def __post_init__(self) -> None:
        _require(bool(self.train), "data.sources[].train", "a shard pattern is required")
        _require(self.weight > 0, "data.sources[].weight", f"must be > 0, got {self.weight}")


@dataclass
class DataConfig:
    train: str = doc("Training shards: a tar file, folder, glob or brace pattern.", default="")
    sources: list[SourceConfig] | None = doc(
        "Several training shard sets mixed by weight, instead of data.train.", default=None
    )
    val: str | None = doc(
        "Held-out shards for evaluation (same forms as data.train).", default=None
    )
    tokenizer: str = doc(
        "Folder of a Hugging Face tokenizer (WordPiece/BERT); empty = model.text.pretrained's "
        "own, else one trained on the training captions into <run dir>/tokenizer.",
        default="",
    )
    tokenizer_vocab_size: int = doc(
        "Vocabulary of the tokenizer trained when data.tokenizer is empty (BERT's is 30522).",
        default=30522,
    )
    tokenizer_captions: int = doc(
        "Training captions (a seeded sample, whole shards in shuffled order) that tokenizer "
        "is trained on.",
        default=100_000,
    )
    image_size: int = doc("Side of the square crop fed to the vision encoder, pixels.", default=64)
    crop: str = doc(
        "How a training image becomes the square: center (shorter side, centre square) or "
        "random_resized (a random box of data.crop_scale of the area, aspect 3/4-4/3, "
        "reseeded per sample and epoch); evaluation always uses center.",
        default="center",
    )
    # OpenCLIP's train transform default (open_clip.transform.AugmentationCfg.scale): a crop
    # keeps most of the picture, so the caption still describes it; torchvision's (0.08, 1)
    # is for labels of one object, and ALBEF's (0.5, 1) drops objects its captions name.
    crop_scale: list[float] = doc(
        "[low, high] share of the image area a random_resized crop covers (OpenCLIP's).",
        default_factory=lambda: [0.9, 1.0],
    )
    max_text_len: int = doc("Tokens per caption after truncation and padding.", default=32)
    batch_size: int = doc(
        "Samples per worker per step (global batch = this x workers).", default=32
    )
    shuffle_buffer: int = doc(
        "Rows in the local shuffle buffer of each worker; 0 disables.", default=256
    )
    ingest_cpus: float | None = doc(
        "Most CPUs this run's Ray Data tasks hold at once; null = whatever the cluster has "
        "free. Runs sharing a cluster (a sweep's trials) need it, or one run's read tasks "
        "can take the CPUs another run's workers wait for.",
        default=None,
    )

    caption_source: str = doc(
        "Where captions come from: txt member, a json field, or a cls label.", default="txt"
    )
    caption_json_field: str = doc(
        "Field of the json member holding the caption (data.caption_source=json).",
        default="caption",
    )
    label_template: str = doc(
        "Caption made from a cls label (data.caption_source=cls).",
        default="a photo of a {label}",
    )
    class_names: list[str] | None = doc(
        "Names for integer cls labels, by index; null uses the label text itself.", default=None
    )
    min_image_side: int = doc("Images with a shorter side are skipped as too small.", default=16)
    max_image_pixels: int = doc(
        "Images with more pixels are refused before decoding (decompression bombs).",
        default=50_000_000,
    )
    max_bad_fraction: float = doc(
        "Stop the run when more than this share of samples read so far was unusable.",
        default=0.5,
    )

    def __post_init__(self) -> None:
        if self.ingest_cpus is not None:
            _require(self.ingest_cpus > 0, "data.ingest_cpus", "must be > 0, or null")
        _require(
            not (self.train and self.sources),
            "data.sources",
            "set either data.train or data.sources, not both",
        )
        _choice(self.caption_source, "data.caption_source", CAPTION_SOURCES)
        _require(
            "{label}" in self.label_template,
            "data.label_template",
            f"must contain '{{label}}', got {self.label_template!r}",
        )
        _require(self.min_image_side >= 1, "data.min_image_side", "must be >= 1")
        _require(self.max_image_pixels >= 1, "data.max_image_pixels", "must be >= 1")
        _require(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", "must be in [0, 1]")
        _choice(self.crop, "data.crop", CROPS)
        _require(
            isinstance(self.crop_scale, list | tuple)
            and len(self.crop_scale) == 2
            and all(isinstance(v, int | float) for v in self.crop_scale)
            and 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0,
            "data.crop_scale",
            f"must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale!r}",
        )
        _require(self.image_size >= 32, "data.image_size", f"must be >= 32, got {self.image_size}")
        _require(
            self.max_text_len >= 8, "data.max_text_len", f"must be >= 8, got {self.max_text_len}"
        )
        _require(
            self.batch_size >= 2,
            "data.batch_size",
            f"must be >= 2 (ITC needs negatives), got {self.batch_size}",
        )
        _require(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        _require(
            self.tokenizer_vocab_size >= MIN_VOCAB,
            "data.tokenizer_vocab_size",
            f"must be >= {MIN_VOCAB}, got {self.tokenizer_vocab_size}",
        )
        _require(
            self.tokenizer_captions >= 1,
            "data.tokenizer_captions",
            f"must be >= 1, got {self.tokenizer_captions}",
        )


VISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class VisionConfig:
    name: str = doc("torchvision ResNet architecture.", default="resnet50")
    depths: list[int] | None = doc(
        "Blocks per stage overriding the architecture's (4 ints); null keeps torchvision's.",
        default=None,
    )
    weights: str | None = doc(
        "Local torchvision state dict (.pth) to start the ResNet from; null = random init.",
        default=None,
    )

    def __post_init__(self) -> None:
        _choice(self.name, "model.vision.name", VISION_ARCHS)
        _require(
            self.weights is None or "://" not in self.weights,
            "model.vision.weights",
            "must be a local file (weights are never downloaded)",
        )
        if self.depths is not None:
            _require(
                len(self.depths) == 4 and all(isinstance(d, int) and d >= 1 for d in self.depths),
                "model.vision.depths",
                f"must be 4 positive ints, got {self.depths}",
            )


@dataclass
class TextConfig:
    hidden_size: int = doc("BERT hidden width.", default=768)
    layers: int = doc("BERT transformer layers.", default=12)
    heads: int = doc("BERT attention heads.", default=12)
    intermediate_size: int = doc("BERT feed-forward width.", default=3072)
    max_positions: int | None = doc(
        "BERT position embeddings (>= data.max_text_len); null = max(512, data.max_text_len).",
        default=None,
    )
    pretrained: str | None = doc(
        "Local Hugging Face BERT folder to start from; its config.json sets the sizes above "
        "(a value you set yourself must agree with it). null = random init.",
        default=None,
    )

    def __post_init__(self) -> None:
        _require(
            self.pretrained is None or "://" not in self.pretrained,
            "model.text.pretrained",
            "must be a local folder (weights are never downloaded)",
        )
        for key in ("hidden_size", "layers", "heads", "intermediate_size"):
            _require(getattr(self, key) >= 1, f"model.text.{key}", "must be >= 1")
        _require(
            self.max_positions is None or self.max_positions >= 8,
            "model.text.max_positions",
            f"must be >= 8 or null, got {self.max_positions}",
        )
        _require(
            self.hidden_size % self.heads == 0,
            "model.text.heads",
            f"must divide model.text.hidden_size ({self.hidden_size}), got {self.heads}",
        )


FUSION_TYPES = ("cross_attention", "merged", "co_attention", "gated")


@dataclass
class FusionConfig:
    type: str = doc(
        "cross_attention (text attends to regions, ALBEF), merged (one stream over both), "
        "co_attention (two streams attending each other), gated (cross-attention weighted per "
        "token by a learned gate).",
        default="cross_attention",
    )
    layers: int = doc("Fusion layers (depth).", default=6)
    heads: int = doc("Attention heads in each fusion layer.", default=12)
    width: int | None = doc("Fusion width; null = the text encoder's hidden size.", default=None)
    dropout: float = doc("Dropout inside the fusion layers.", default=0.1)

    def __post_init__(self) -> None:
        _choice(self.type, "model.fusion.type", FUSION_TYPES)
        _require(self.layers >= 1, "model.fusion.layers", f"must be >= 1, got {self.layers}")
        _require(self.heads >= 1, "model.fusion.heads", f"must be >= 1, got {self.heads}")
        _require(
            self.width is None or self.width >= 1, "model.fusion.width", "must be >= 1 or null"
        )
        _require(0.0 <= self.dropout < 1.0, "model.fusion.dropout", "must be in [0, 1)")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    embed_dim: int = doc("Width of the shared ITC embedding space.", default=256)

    @property
    def fusion_width(self) -> int:
        return self.fusion.width or self.text.hidden_size

    def __post_init__(self) -> None:
        _require(self.embed_dim >= 1, "model.embed_dim", "must be >= 1")
        _require(
            self.fusion_width % self.fusion.heads == 0,
            "model.fusion.heads",
            f"must divide the fusion width ({self.fusion_width}), got {self.fusion.heads}",
        )


OBJECTIVE_WEIGHTS = ("itc", "itm", "mlm", "text_mlm", "image_ssl")


@dataclass
class ObjectivesConfig:
    itc: float = doc("Weight of image-text contrastive loss (0 skips it).", default=1.0)
    itm: float = doc("Weight of image-text matching with hard negatives (0 skips it).", default=1.0)
    mlm: float = doc(
        "Weight of image-conditioned masked language modelling (0 skips it).", default=1.0
    )
    text_mlm: float = doc(
        "Weight of text-only masked language modelling on the text encoder (0 skips it).",
        default=0.5,
    )
    image_ssl: float = doc(
        "Weight of the image-only SimSiam loss on two augmented views (0 skips it).", default=0.5
    )
    mlm_probability: float = doc("Share of caption tokens masked for MLM.", default=0.15)
    temperature: float = doc("Initial ITC temperature (learned).", default=0.07)
    distill: bool = doc(
        "Momentum distillation (ALBEF): EMA encoders give soft targets for ITC and MLM.",
        default=False,
    )
    momentum: float = doc(
        "EMA factor of the momentum encoders (objectives.distill).", default=0.995
    )
    distill_alpha: float = doc(
        "Weight of the momentum model's soft targets against the hard ones.", default=0.4
    )
    ssl_dim: int = doc("Width of the SimSiam projector and predictor output.", default=256)
    ssl_view_size: int | None = doc(
        "Side in pixels of each SimSiam view; null = data.image_size. Smaller is cheaper.",
        default=None,
    )

    def __post_init__(self) -> None:
        for key in OBJECTIVE_WEIGHTS:
            _require(getattr(self, key) >= 0, f"objectives.{key}", "weight must be >= 0")
        _require(
            sum(getattr(self, key) for key in OBJECTIVE_WEIGHTS) > 0,
            "objectives",
            f"at least one of {list(OBJECTIVE_WEIGHTS)} must have a weight > 0",
        )
        _require(
            0.0 < self.mlm_probability < 1.0, "objectives.mlm_probability", "must be in (0, 1)"
        )
        _require(0.0 < self.temperature <= 1.0, "objectives.temperature", "must be in (0, 1]")
        _require(0.0 < self.momentum < 1.0, "objectives.momentum", "must be in (0, 1)")
        _require(0.0 <= self.distill_alpha <= 1.0, "objectives.distill_alpha", "must be in [0, 1]")
        _require(
            not self.distill or self.itc > 0 or self.mlm > 0,
            "objectives.distill",
            "distills ITC and MLM; give objectives.itc or objectives.mlm a weight > 0",
        )
        _require(self.ssl_dim >= 4, "objectives.ssl_dim", "must be >= 4")
        _require(
            self.ssl_view_size is None or self.ssl_view_size >= 32,
            "objectives.ssl_view_size",
            "must be >= 32 or null",
        )


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    num_workers: int | list[int] = doc(
        "Ray Train workers (one per GPU, or CPU processes); [min, max] lets Ray Train run "
        "elastically on what the cluster has (a resume converts the ZeRO shards).",
        default=2,
    )
    use_gpu: bool = doc(
        "Give each worker one GPU (NCCL); false trains on CPU with gloo.", default=False
    )
    cpus_per_worker: float = doc(
        "Logical CPUs reserved per worker; keep below the node's CPUs so Ray Data can run.",
        default=1.0,
    )
    max_steps: int = doc("Optimizer steps to train for (the run ends here).", default=1000)
    stop_at: int | None = doc(
        "Stop this invocation at this step with a checkpoint, the schedule still running to "
        "max_steps; re-run to go on (for time-boxed allocations). null = max_steps.",
        default=None,
    )
    max_failures: int = doc(
        "Times a run restarts its workers from the newest complete checkpoint after a worker "
        "or node fails; -1 = always, 0 = fail at once (Ray retries every worker error, bad "
        "data and bad config included, so a retry budget is for long runs).",
        default=0,
    )
    start_timeout_s: float = doc(
        "Seconds one worker-group start waits for the cluster to fit it; after 3 failed "
        "starts the run fails (Ray Train would retry forever); -1 waits forever (autoscaling).",
        default=300.0,
    )
    stop_grace_s: float = doc(
        "Seconds a SIGTERM/SIGINT stop may take to finish the step and write its checkpoint "
        "(enough for a base-size ZeRO checkpoint to object storage) before the run ends without "
        "it; jobs and pods must wait at least this long before killing.",
        default=300.0,
    )
    log_every: int = doc("Print progress and write metrics.jsonl every N steps.", default=10)
    storage_path: str = doc(
        "Parent of run directories: a path (local, or a file system every node mounts) or an "
        "object-store URI (s3://, gs://) that Ray Train writes through pyarrow.",
        default="runs",
    )
    run_name: str = doc("Run directory name; re-using it resumes the run.", default="mmpretrain")
    zero_stage: int = doc("DeepSpeed ZeRO stage.", default=2)
    precision: str = doc("auto (bf16 on GPU, fp32 on CPU), fp32 or bf16.", default="auto")
    grad_accum: int = doc("Micro-batches accumulated per optimizer step.", default=1)
    seed: int = doc("Seed for model init, masking and negative sampling.", default=0)
    deterministic: bool = doc(
        "Same seed and world size, same loss at every step: Ray Data keeps block order "
        "(slower ingest) and torch uses deterministic kernels.",
        default=False,
    )
    record_sample_keys: bool = doc(
        "Write every trained sample's key, by step, to sample_keys/rank-N.tsv in the run "
        "directory (an audit of the data order; grows with the run).",
        default=False,
    )
    channels_last: bool = doc(
        "Run the ResNet in channels-last memory format (faster convolutions).", default=True
    )
    activation_checkpointing: bool = doc(
        "Recompute text-encoder and fusion activations in backward to save memory.",
        default=False,
    )
    compile: bool = doc(
        "torch.compile the encoders and fusion (first steps are slower while it compiles).",
        default=False,
    )

    def __post_init__(self) -> None:
        _require(
            1 <= self.min_workers <= self.max_workers
            and (isinstance(self.num_workers, int) or len(self.num_workers) == 2),
            "train.num_workers",
            f"must be a count >= 1 or [min, max] with 1 <= min <= max; got {self.num_workers!r}",
        )
        _require(
            self.stop_at is None or 1 <= self.stop_at <= self.max_steps,
            "train.stop_at",
            "must be null or in [1, train.max_steps]",
        )
        _require(
            self.start_timeout_s == -1 or self.start_timeout_s > 0,
            "train.start_timeout_s",
            "must be > 0, or -1 to wait forever",
        )
        _require(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
        _require(self.stop_grace_s > 0, "train.stop_grace_s", "must be > 0")
        _require(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        _require(self.max_failures >= -1, "train.max_failures", "must be >= -1")
        _require(self.log_every >= 1, "train.log_every", "must be >= 1")
        _require(
            bool(self.run_name) and "/" not in self.run_name,
            "train.run_name",
            "must be a non-empty name without '/'",
        )
        _choice(self.zero_stage, "train.zero_stage", (0, 1, 2, 3))
        _choice(self.precision, "train.precision", PRECISIONS)
        _require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")

    @property
    def min_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[-1]

    @property
    def last_step(self) -> int:
        """Where this invocation stops: train.stop_at, else train.max_steps."""
        return self.stop_at or self.max_steps


@dataclass
class OptimConfig:
    lr: float = doc("Peak learning rate of AdamW.", default=1e-4)
    weight_decay: float = doc("AdamW weight decay.", default=0.02)
    warmup_steps: int = doc("Linear warmup steps before the cosine decay.", default=100)
    min_lr_ratio: float = doc("Cosine floor as a fraction of optim.lr.", default=0.1)
    grad_clip: float = doc("Clip the global gradient norm to this; 0 disables.", default=1.0)
    fused: bool = doc(
        "torch's fused AdamW kernel: one pass over all parameters instead of one small kernel "
        "per tensor and operation (GPU, and CPU on torch >= 2.4); false = torch's default.",
        default=True,
    )

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "must be > 0")
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "must be in [0, 1]")
        _require(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")


@dataclass
class CheckpointConfig:
    every: int = doc("Save a checkpoint every N steps (and at the end).", default=500)
    keep: int | None = doc(
        "Keep the newest K complete checkpoints, deleting older ones; null keeps all.",
        default=None,
    )

    def __post_init__(self) -> None:
        _require(self.every >= 1, "checkpoint.every", "must be >= 1")
        _require(self.keep is None or self.keep >= 1, "checkpoint.keep", "must be >= 1 or null")


# Keys that moved out of ``train`` into sections of their own: an old key fails naming the new.
MOVED_KEYS = {
    "train.lr": "optim.lr",
    "train.weight_decay": "optim.weight_decay",
    "train.warmup_steps": "optim.warmup_steps",
    "train.min_lr_ratio": "optim.min_lr_ratio",
    "train.grad_clip": "optim.grad_clip",
    "train.checkpoint_every": "checkpoint.every",
    "train.keep_checkpoints": "checkpoint.keep",
}


@dataclass
class EvalConfig:
    every: int = doc(
        "Evaluate on data.val every N steps during training (0: only at the end).", default=0
    )
    ks: list[int] = doc("Recall@K cut-offs reported.", default_factory=lambda: [1, 5, 10])
    rerank_k: int = doc(
        "Re-rank each query's top k ITC candidates by ITM score (ALBEF's k_test); 0 disables.",
        default=16,
    )
    class_names: list[str] | str | None = doc(
        "Zero-shot class names by label index: a list, or a text file with one per line; "
        "null = the distinct cls labels of the data.",
        default=None,
    )
    prompt_template: str = doc(
        "Zero-shot prompt; {} becomes the class name.", default="a photo of a {}"
    )

    def __post_init__(self) -> None:
        _require(self.every >= 0, "eval.every", "must be >= 0")
        _require(bool(self.ks) and all(k >= 1 for k in self.ks), "eval.ks", "must be positive ints")
        _require(self.rerank_k >= 0, "eval.rerank_k", "must be >= 0")
        _require(
            "{}" in self.prompt_template,
            "eval.prompt_template",
            f"must contain '{{}}', got {self.prompt_template!r}",
        )


@dataclass
class ClusterConfig:
    address: str | None = doc(
        "Ray cluster to join ('auto', 'ray://host:10001'); null starts an embedded local Ray "
        "unless RAY_ADDRESS is set.",
        default=None,
    )
    num_cpus: int | None = doc(
        "Logical CPUs of the embedded Ray; null = workers' CPUs plus the machine's cores.",
        default=None,
    )

    def __post_init__(self) -> None:
        if self.num_cpus is not None:
            _require(self.num_cpus >= 1, "cluster.num_cpus", "must be >= 1")


@dataclass
class ObserveConfig:
    metrics_port: int | None = doc(
        "Port on which rank 0 also serves the training metrics (prometheus_client, names "
        "without Ray's ray_ prefix); null disables. A port already taken is warned about and "
        "skipped; Ray's per-node metrics endpoint serves them either way.",
        default=9400,
    )
    metrics_host: str = doc(
        "Address the observe.metrics_port server binds to (0.0.0.0 for other machines).",
        default="127.0.0.1",
    )
    sweep: str | None = doc(
        "The sweep this run is a trial of (set by mmpretrain sweep): a label on its metrics "
        "beside run, so a dashboard can show one sweep's trials together.",
        default=None,
    )
    verbose: bool = doc(
        "Also show Ray's own log lines (cluster start, Ray Data plans, Ray Train reports) and "
        "library deprecation notices on the console; false leaves them in Ray's log files.",
        default=False,
    )

    def __post_init__(self) -> None:
        if self.metrics_port is not None:
            _require(
                1 <= self.metrics_port <= 65535,
                "observe.metrics_port",
                f"must be a port in [1, 65535] or null, got {self.metrics_port}",
            )
        _require(bool(self.metrics_host), "observe.metrics_host", "must be a non-empty address")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)

    @property
    def run_storage(self) -> Folder:
        """The run directory in train.storage_path (a path or an object-store URI): where
        checkpoints, the resolved config and (copied at each checkpoint) the logs live."""
        return Folder.of(self.train.storage_path) / self.train.run_name

    @property
    def run_dir(self) -> Path:
        """The local folder a run writes its logs to (metrics.jsonl, eval.json): the run
        directory itself on local or shared storage, a local mirror of it for URIs."""
        if is_uri(self.train.storage_path):
            where = hashlib.sha256(self.train.storage_path.encode()).hexdigest()[:12]
            return Path(tempfile.gettempdir()) / "mmpretrain-runs" / where / self.train.run_name
        return Path(self.train.storage_path).expanduser().resolve() / self.train.run_name

    def with_absolute_paths(self) -> RunConfig:
        """A copy whose local paths no longer depend on the working directory.

        Ray workers and data tasks run in directories of their own, so a relative
        ``data/tokenizer`` that the driver found would not be found there.
        """
        data = dataclasses.replace(
            self.data,
            train=_absolute(self.data.train),
            val=_absolute(self.data.val),
            tokenizer=_absolute(self.data.tokenizer),
            sources=[dataclasses.replace(s, train=_absolute(s.train)) for s in self.data.sources]
            if self.data.sources
            else self.data.sources,
        )
        train = dataclasses.replace(self.train, storage_path=_absolute(self.train.storage_path))
        model = dataclasses.replace(
            self.model,
            vision=dataclasses.replace(
                self.model.vision, weights=_absolute(self.model.vision.weights)
            ),
            text=dataclasses.replace(
                self.model.text, pretrained=_absolute(self.model.text.pretrained)
            ),
        )
        class_names = self.eval.class_names
        if isinstance(class_names, str):
            class_names = _absolute(class_names)
        evaluation = dataclasses.replace(self.eval, class_names=class_names)
        return dataclasses.replace(self, data=data, train=train, model=model, eval=evaluation)

    def check_runnable(self) -> None:
        """Checks that only matter when training, so `config show` works on a bare preset.

        The files a run reads are checked by ``mmpretrain.train.preflight.prepare_run``, which
        also resolves an empty data.tokenizer.
        """
        _require(
            bool(self.data.train or self.data.sources),
            "data.train",
            "a shard pattern (or data.sources) is required to train",
        )

    def with_values(self, values: typing.Mapping[str, Any]) -> RunConfig:
        """A copy with these dotted keys set, checked like any config (a sweep's trial)."""
        return _build(RunConfig, _merge(self.to_dict(), dotted_tree(values)), "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Building a config from plain data
# ---------------------------------------------------------------------------------------------


def _absolute(path: str | None) -> str | None:
    """Local paths and patterns made absolute (text only, so globs and braces survive)."""
    if not path or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks a YAML value against a field's annotation; ints widen to floats, nothing else."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        _require(isinstance(value, list), key, f"expected a list, got {value!r}")
        if _is_dataclass_type(item_type):
            return [_build(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        _require(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if tp is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"expected an integer, got {value!r}",
        )
        return value
    if tp is bool:
        _require(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        _require(
            isinstance(value, str | int | float) and not isinstance(value, bool),
            key,
            f"expected a string, got {value!r}",
        )
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    unknown = sorted(set(data) - set(names))
    moved = [_join(prefix, name) for name in unknown if _join(prefix, name) in MOVED_KEYS]
    if moved:
        raise ConfigError(
            f"{moved[0]} is now {MOVED_KEYS[moved[0]]}; write {MOVED_KEYS[moved[0]]}=... "
            f"(in YAML: {MOVED_KEYS[moved[0]].replace('.', ': ', 1)})"
        )
    if unknown:
        where = prefix or "top level"
        raise ConfigError(
            f"unknown key {_join(prefix, unknown[0])!r} at {where}; allowed keys are {names}"
        )
    kwargs = {}
    for name, value in data.items():
        key = _join(prefix, name)
        tp = hints[name]
        kwargs[name] = _build(tp, value, key) if _is_dataclass_type(tp) else _coerce(value, tp, key)
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if not path.suffix:
        if str(source) not in preset_names():
            raise ConfigError(
                f"--config: no preset named {str(source)!r}; presets are"
                f" {preset_names()} or give a path to a YAML file"
            )
        path = PRESET_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping at the top level")
    return data


def parse_overrides(overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Turns ``a.b=1`` strings into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "", item)
    return tree


def dotted_tree(values: typing.Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``, values kept as they are (not parsed as text)."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        _set_dotted(tree, key, value, key)
    return tree


def _set_dotted(tree: dict[str, Any], key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r} conflicts with an earlier override")
    node[parts[-1]] = value


def load_config(
    source: str | Path | None = "tiny",
    overrides: typing.Sequence[str] = (),
    values: typing.Mapping[str, Any] | None = None,
) -> RunConfig:
    """Builds a validated ``RunConfig`` from a preset name or YAML path plus dotted overrides.

    ``values``: dotted keys with Python values, applied after ``overrides`` (a sweep's trial
    values: typed already, so ``1e-08`` stays a float instead of YAML's string).

    With ``model.text.pretrained`` set, the folder's config.json sets the text tower's shape:
    a shipped preset's sizes (or the defaults) give way to it, while a size the user wrote
    (their own YAML file or an override) must agree with it. Where each value came from is
    only known here, so this is where the folder is read.
    """
    data = _read_yaml(source) if source is not None else {}
    override_tree = _merge(parse_overrides(overrides), dotted_tree(values or {}))
    data = _merge(data, override_tree)
    chosen = override_tree if source is None or _is_shipped_preset(source) else data
    data = _adopt_pretrained_text_shape(data, chosen)
    return _build(RunConfig, data, "")


# model.text.* key -> the BERT config.json field that decides it (what a pretrained folder sets)
BERT_SHAPE_FIELDS = {
    "hidden_size": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_positions": "max_position_embeddings",
}


def check_text_matches_bert(text: TextConfig, bert_config: typing.Mapping[str, Any]) -> None:
    """Every size model.text sets equals the pretrained folder's config.json; the driver's
    preflight and the text encoder's own last guard both ask this."""
    for key, hf_name in BERT_SHAPE_FIELDS.items():
        ours, theirs = getattr(text, key), bert_config.get(hf_name)
        if ours is not None and ours != theirs:
            raise ConfigError(
                f"model.text.{key}={ours} but {text.pretrained!r} has {hf_name}={theirs}; drop "
                f"model.text.{key} to take the folder's value"
            )


def _is_shipped_preset(source: str | Path) -> bool:
    path = Path(source)
    if not path.suffix:
        return True  # a preset name; _read_yaml has refused anything else
    return path.resolve().parent == PRESET_DIR.resolve()


def read_bert_config(folder: str | Path) -> dict[str, Any] | None:
    """A pretrained folder's config.json, or None when the folder has none.

    Read with json alone: importing transformers to read six numbers would cost seconds in
    every command that loads a config.
    """
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model.text.pretrained: cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"model.text.pretrained: {str(path)!r} does not hold a JSON object")
    return data


def _subtree(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _adopt_pretrained_text_shape(data: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """``data`` with model.text's sizes taken from model.text.pretrained's config.json.

    ``chosen`` holds what the user set themselves; a size there that disagrees with the folder
    is an error naming both, never silently replaced. A folder without config.json is left to
    the driver's checks (train/preflight.py): evaluating or exporting a finished run does not
    read the folder, so it need not exist any more.
    """
    text = _subtree(data, "model", "text")
    folder = text.get("pretrained")
    if not isinstance(folder, str) or not folder or is_uri(folder):
        return data
    hf_config = read_bert_config(folder)
    if hf_config is None:
        return data
    yours = _subtree(chosen, "model", "text")
    adopted: dict[str, Any] = {}
    for key, hf_name in BERT_SHAPE_FIELDS.items():
        theirs = hf_config.get(hf_name)
        if not isinstance(theirs, int) or isinstance(theirs, bool):
            continue
        mine = yours.get(key)
        if mine is not None and mine != theirs:
            raise ConfigError(
                f"model.text.{key}={mine} but {folder!r} has {hf_name}={theirs}: your setting "
                f"disagrees with model.text.pretrained's config.json; drop model.text.{key} to "
                "take the folder's value"
            )
        adopted[key] = theirs
    fusion = _subtree(data, "model", "fusion")
    heads = fusion.get("heads", FusionConfig.__dataclass_fields__["heads"].default)
    hidden = adopted.get("hidden_size")
    if fusion.get("width") is None and isinstance(heads, int) and isinstance(hidden, int):
        _require(
            heads >= 1 and hidden % heads == 0,
            "model.fusion.heads",
            f"{heads} heads must divide the fusion width, which is the text hidden size "
            f"{hidden} of model.text.pretrained {folder!r} (model.fusion.width is null); "
            "set model.fusion.heads to a divisor of it, or set model.fusion.width",
        )
    return _merge(data, {"model": {"text": adopted}})


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuilds a config shipped to Ray workers or saved in a run directory."""
    return _build(RunConfig, data, "")


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, description) for every leaf field, for help output."""
    rows: list[tuple[str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if _is_dataclass_type(hints[f.name]):
            rows.extend(describe_fields(hints[f.name], key))
        else:
            rows.append((key, f.metadata.get("doc", "")))
    return rows
