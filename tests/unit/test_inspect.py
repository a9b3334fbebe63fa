"""`mmpretrain data inspect` reports what training would skip, for the same reasons."""

from __future__ import annotations

import json
from pathlib import Path

from mmpretrain.cli import main
from mmpretrain.config import DataConfig
from mmpretrain.data.inspect import inspect_shards
from tests.badshards import BAD_REASONS, write_mixed_shards, write_truncated_copy


def test_inspect_counts_samples_reasons_and_damage(tmp_path: Path) -> None:
    kinds = write_mixed_shards(tmp_path, good=10)
    write_truncated_copy(tmp_path)
    report = inspect_shards(str(tmp_path), DataConfig(image_size=32, max_text_len=16))
    first, second, damaged = report["shards"]
    assert first["samples"] + second["samples"] == sum(len(v) for v in kinds.values())
    expected: dict[str, int] = {}
    for reason in BAD_REASONS.values():
        expected[reason] = expected.get(reason, 0) + 1
    merged: dict[str, int] = {}
    for shard in (first, second):
        for reason, count in shard["skipped"].items():
            merged[reason] = merged.get(reason, 0) + count
    assert merged == expected
    assert damaged["error"].startswith("damaged after 3 samples")
    assert damaged["skipped"]["truncated_tar"] == 1
    assert report["damaged_shards"] == [damaged["path"]]
    assert report["extensions"]["txt"] > 0 and "jpg" in report["extensions"]
    assert report["caption_words"]["min"] >= 1 and report["image_shorter_side"]["max"] == 96


def test_cli_inspect_json_and_strict(tmp_path: Path, capsys) -> None:
    write_mixed_shards(tmp_path, good=10)
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.3 < report["bad_fraction"] < 0.4  # 9 bad of 25
    assert main(["data", "inspect", str(tmp_path), "--strict", "data.max_bad_fraction=0.5"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path), "--strict", "data.max_bad_fraction=0.2"]) == 1
    assert "more than data.max_bad_fraction=0.2" in capsys.readouterr().err


def test_cli_inspect_applies_data_overrides_to_the_sample_rules(tmp_path: Path, capsys) -> None:
    kinds = write_mixed_shards(tmp_path, good=10)
    # The good images are 96 px: a larger minimum side makes every decodable one too small.
    assert main(["data", "inspect", str(tmp_path), "--json", "data.min_image_side=97"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"]["image_too_small"] >= len(kinds["good"])
    assert report["image_shorter_side"] == {}  # nothing usable left
