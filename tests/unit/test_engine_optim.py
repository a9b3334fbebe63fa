"""optim.fused reaches the AdamW the DeepSpeed engine steps, and a fused step trains under ZeRO.

A real DeepSpeed engine on a one-rank gloo group, in a fresh interpreter: initialising
torch.distributed here would make every later test in this process look distributed.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, os, socket, sys
import torch, torch.distributed as dist
from mmpretrain.config import load_config
from mmpretrain.model import TokenIds, build_task
from mmpretrain.train.engine import build_engine

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
results = []
for overrides in json.loads(sys.argv[1]):
    cfg = load_config("tiny", overrides)
    torch.manual_seed(0)
    task = build_task(cfg.model, cfg.objectives, TokenIds(300, 0, 2, 3, 4), cfg.data.max_text_len)
    engine = build_engine(task, cfg)
    adamw = engine.optimizer
    while not isinstance(adamw, torch.optim.AdamW):  # ZeRO wraps the torch optimizer
        adamw = adamw.optimizer
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    ids = torch.randint(5, 300, (4, cfg.data.max_text_len))
    ids[:, 0] = 2
    before = [p.detach().clone() for p in adamw.param_groups[0]["params"]]
    loss = engine(images, ids, torch.ones_like(ids))["loss"]
    engine.backward(loss)
    engine.step()
    moved = any(not torch.equal(a, p) for a, p in zip(before, adamw.param_groups[0]["params"]))
    results.append({"fused": [g["fused"] for g in adamw.param_groups],
                    "foreach": [g["foreach"] for g in adamw.param_groups], "moved": moved,
                    "finite": bool(torch.isfinite(loss))})
print(json.dumps(results))
dist.destroy_process_group()
"""


def test_optim_fused_reaches_the_engines_adamw_and_steps_under_zero() -> None:
    """One interpreter, two ZeRO-2 engines (the presets' stage): fused (the default), and off."""
    cases = [["train.zero_stage=2"], ["optim.fused=false", "train.zero_stage=2"]]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fused, default = json.loads(done.stdout.strip().splitlines()[-1])
    assert fused["fused"] == [True, True]
    assert fused["moved"] and fused["finite"]
    # False must not be passed on as fused=False, which would also rule out foreach on GPU.
    assert default["fused"] == [None, None]
    assert default["foreach"] == [None, None]
    assert default["moved"] and default["finite"]
