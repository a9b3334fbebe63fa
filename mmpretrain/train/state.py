"""Everything besides the DeepSpeed engine that a resume must restore, as one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmpretrain.train.position import DataPosition


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed passes over the training shards
    samples_seen: int = 0  # global samples trained on
    position: DataPosition = field(default_factory=DataPosition)  # within the current epoch

    def state_dict(self) -> dict[str, Any]:
        return {**self.summary(), "data_position": self.position.to_dict()}

    def summary(self) -> dict[str, Any]:
        """What the checkpoint manifest records: small, whatever the epoch's size."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "samples_seen": self.samples_seen,
            "data_position": self.position.summary(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_seen = int(state["samples_seen"])
        self.position = DataPosition.from_dict(state["data_position"])

    def next_epoch(self) -> None:
        self.epoch += 1
        self.position = DataPosition(epoch=self.epoch)
