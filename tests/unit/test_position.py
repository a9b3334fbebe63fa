"""The data position: merging ranks, compacting finished shards, surviving a round trip."""

from __future__ import annotations

import json

import pytest

from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.train.position import DataPosition
from mmpretrain.train.state import TrainState


def test_ranks_merge_and_a_fully_consumed_shard_becomes_finished(tmp_path) -> None:
    write_synthetic_shards(tmp_path, 8, shard_size=4, seed=0)
    first, second = sorted(str(p) for p in tmp_path.glob("*.tar"))
    rank0, rank1 = DataPosition(epoch=2), DataPosition(epoch=2)
    rank0.record([first, first, second], ["000000000", "000000001", "000000004"])
    rank1.record([first, first], ["000000002", "000000003"])

    rank0.merge(rank1)
    rank0.compact()

    assert rank0.finished == {first}
    assert rank0.consumed == {second: {"000000004"}}
    assert rank0.summary() == {
        "epoch": 2,
        "shards_finished": 1,
        "shards_in_progress": 1,
        "keys_consumed_in_progress": 1,
    }
    assert rank0.started and not DataPosition(epoch=3).started


def test_positions_of_different_epochs_do_not_merge() -> None:
    with pytest.raises(ValueError, match="epochs 0 and 1"):
        DataPosition(epoch=0).merge(DataPosition(epoch=1))


def test_train_state_round_trips_through_json_with_its_position() -> None:
    state = TrainState(step=7, epoch=1, samples_seen=112)
    state.position = DataPosition(epoch=1)
    state.position.record(["s3://bucket/a.tar"], ["k1"])  # remote: kept as keys, never listed
    state.position.compact()

    restored = TrainState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))

    assert restored == state
    assert restored.summary()["data_position"]["keys_consumed_in_progress"] == 1
    restored.next_epoch()
    assert (restored.epoch, restored.position) == (2, DataPosition(epoch=2))
