"""Batches Ray hands over are read-only; collation shares their memory without a warning, and
a training step never writes into what it was handed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from mmpretrain.config import DataConfig
from mmpretrain.data.pipeline import collate_batch
from mmpretrain.data.synth import synth_sample
from mmpretrain.data.transforms import preprocess_rows
from tests.unit.test_model import make_task

REPO = Path(__file__).resolve().parents[2]

# Builds a read-only batch, as Ray's Arrow-backed batches are, and converts it with warnings as
# errors. It runs in a fresh interpreter because torch prints this warning once per process: in
# the test process an earlier conversion may already have spent it, and the check would prove
# nothing.
SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
        "input_ids": rng.integers(0, 300, (4, 16), dtype=np.int64),
        "attention_mask": (rng.random((4, 16)) < 0.7).astype(np.int64),
        "key": np.array(["k0", "k1", "k2", "k3"], dtype=object),
        "url": np.array(["s.tar"] * 4, dtype=object),
        "label": np.array(["cat", "", "dog", "cat"], dtype=object),
    }
    for name in ("image", "input_ids", "attention_mask"):
        batch[name].setflags(write=False)
    if sys.argv[1] == "collate":
        from mmpretrain.data.pipeline import collate_batch as convert
    else:  # the control: what collation did before
        def convert(b):
            return {n: torch.from_numpy(b[n]) for n in ("image", "input_ids", "attention_mask")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert(batch)
    for name in ("image", "input_ids", "attention_mask"):
        assert out[name].dtype == torch.from_numpy(batch[name].copy()).dtype, name
        assert np.array_equal(out[name].numpy(), batch[name]), name
        assert out[name].data_ptr() == batch[name].ctypes.data, f"{name} was copied"
    if sys.argv[1] == "collate":
        assert out["key"] == ["k0", "k1", "k2", "k3"] and out["label"][1] == ""
    print("converted without a warning")
    """
)


def run_fresh(mode: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=120
    )


def test_read_only_batch_collates_without_copy_or_warning() -> None:
    control = run_fresh("from_numpy")
    assert control.returncode != 0 and "not writable" in control.stderr, control.stderr
    collated = run_fresh("collate")
    assert collated.returncode == 0, collated.stderr
    assert "converted without a warning" in collated.stdout


def test_writable_batch_is_shared_too() -> None:
    image = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    ids = np.ones((2, 8), dtype=np.int64)
    batch = {"image": image, "input_ids": ids, "attention_mask": ids.copy()}
    batch |= {name: np.array(["a", "b"], dtype=object) for name in ("key", "url", "label")}
    out = collate_batch(batch)
    assert out["image"].data_ptr() == image.ctypes.data and torch.equal(
        out["input_ids"], torch.ones(2, 8, dtype=torch.int64)
    )


def test_training_step_never_writes_into_the_batch(synth_data) -> None:
    # Sharing read-only memory is only sound while nothing writes through the tensors: every
    # in-place write, through any view, bumps a tensor's version counter. The tiny preset runs
    # every objective (ITC, ITM, MLM, text MLM, image SSL).
    samples = [synth_sample(index, seed=5, side=96) for index in range(8)]
    raw = {
        "__key__": np.array([f"{i:04d}" for i in range(8)]),
        "jpg": np.array([jpeg for jpeg, _ in samples], dtype=object),
        "txt": np.array([caption.encode() for _, caption in samples], dtype=object),
    }
    cfg = DataConfig(image_size=64, max_text_len=32, tokenizer=str(synth_data["tokenizer"]))
    rows, _ = preprocess_rows(raw, cfg)
    for name in ("image", "input_ids", "attention_mask"):
        rows[name].setflags(write=False)
    batch = collate_batch(rows)
    before = {name: batch[name].clone() for name in ("image", "input_ids", "attention_mask")}
    task = make_task(synth_data["tokenizer"])
    losses = task(batch["image"], batch["input_ids"], batch["attention_mask"])
    losses["loss"].backward()
    for name, original in before.items():
        assert batch[name]._version == 0, f"the step wrote into batch[{name!r}]"
        assert torch.equal(batch[name], original), name
