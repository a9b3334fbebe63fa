"""The run config: one typed object describes a run end to end.

Each section is a dataclass whose fields carry a default and a one-line doc; ``__post_init__``
checks name the dotted key. Building one from YAML and overrides is ``load.py``'s job, the
checking of plain data is the schema engine's (``schema.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mmpretrain.config.overrides import dotted_tree
from mmpretrain.config.schema import build, doc, merge
from mmpretrain.config.schema import choice as _choice
from mmpretrain.config.schema import describe_fields as _describe_fields
from mmpretrain.config.schema import require as _require
from mmpretrain.storage import Folder, is_uri

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

    # Keys that moved out of ``train`` into sections of their own: an old key fails naming
    # the new one (the schema engine reads RENAMED).
    RENAMED: ClassVar[dict[str, str]] = {
        "lr": "optim.lr",
        "weight_decay": "optim.weight_decay",
        "warmup_steps": "optim.warmup_steps",
        "min_lr_ratio": "optim.min_lr_ratio",
        "grad_clip": "optim.grad_clip",
        "checkpoint_every": "checkpoint.every",
        "keep_checkpoints": "checkpoint.keep",
    }

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
        return build(RunConfig, merge(self.to_dict(), dotted_tree(values)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _absolute(path: str | None) -> str | None:
    """Local paths and patterns made absolute (text only, so globs and braces survive)."""
    if not path or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def describe_fields(cls: type | None = None, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, description) for every leaf field of the run config (or ``cls``)."""
    return _describe_fields(cls or RunConfig, prefix)
