"""The fused image-text encoder and its objectives: single-device PyTorch, no Ray, no DeepSpeed.

``train/`` wraps these modules; keeping parallelism out lets the same model run in a unit test,
a notebook, or a ZeRO-3 engine unchanged.
"""

from mmpretrain.model.fused import FusedEncoder, TokenIds
from mmpretrain.model.task import PretrainingTask, build_task

__all__ = ["FusedEncoder", "PretrainingTask", "TokenIds", "build_task"]
