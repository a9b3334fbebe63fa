"""``mmpretrain export``: a checkpoint -> one safetensors file + config + tokenizer.

The export is what people share and load with ``mmpretrain.load_pretrained``: no DeepSpeed,
no optimizer state, no training-only heads, one file of weights that loads on CPU or GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from mmpretrain.train.checkpoint.consolidate import (
    EXPORT_CONFIG,
    EXPORT_TOKENIZER,
    EXPORT_WEIGHTS,
    checkpoint_step,
    load_encoder_state,
    resolve_weights,
    source_config,
)


def export(checkpoint: str | Path, out: str | Path) -> Path:
    from safetensors.torch import save_file

    source = resolve_weights(checkpoint)
    cfg = source_config(source)
    state = {name: tensor.contiguous() for name, tensor in load_encoder_state(source).items()}
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out_dir / EXPORT_TOKENIZER
    if Path(cfg.data.tokenizer).resolve() != tokenizer_dir:
        shutil.copytree(cfg.data.tokenizer, tokenizer_dir, dirs_exist_ok=True)
    saved = cfg.to_dict()
    saved["data"]["tokenizer"] = EXPORT_TOKENIZER  # relative: the export folder can move
    (out_dir / EXPORT_CONFIG).write_text(yaml.safe_dump(saved, sort_keys=False))
    save_file(state, str(out_dir / EXPORT_WEIGHTS), metadata={"format": "pt"})
    (out_dir / "export.json").write_text(
        json.dumps(
            {"source": str(source.path), "kind": source.kind, "step": checkpoint_step(source)},
            indent=2,
        )
    )
    return out_dir
