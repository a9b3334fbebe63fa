from __future__ import annotations

from collections import Counter

import pytest

from mmpretrain.config import ConfigError, load_config
from mmpretrain.data.mixing import mix_sources


def test_weights_set_each_sources_share_of_an_epoch() -> None:
    big = [f"big/{i:05d}.tar" for i in range(12)]
    small = [f"small/{i:05d}.tar" for i in range(2)]
    mixed = mix_sources([(big, 1.0), (small, 1.0)], seed=0)
    by_source = Counter(path.split("/")[0] for path in mixed)
    assert by_source == {"big": 7, "small": 7}  # the small source is repeated, the big one thinned
    assert Counter(p for p in mixed if p.startswith("small")) == {
        small[0]: 4,
        small[1]: 3,
    } or Counter(p for p in mixed if p.startswith("small")) == {small[0]: 3, small[1]: 4}
    assert len(set(p for p in mixed if p.startswith("big"))) == 7


def test_mixing_is_seeded() -> None:
    sources = [([f"a/{i}" for i in range(10)], 3.0), ([f"b/{i}" for i in range(10)], 1.0)]
    assert mix_sources(sources, seed=1) == mix_sources(sources, seed=1)
    assert mix_sources(sources, seed=1) != mix_sources(sources, seed=2)
    assert Counter(p[0] for p in mix_sources(sources, seed=1)) == {"a": 15, "b": 5}


def test_sources_in_the_config() -> None:
    cfg = load_config("tiny", ["data.sources=[{train: a/, weight: 3}, {train: b/}]"])
    assert [(s.train, s.weight) for s in cfg.data.sources] == [("a/", 3.0), ("b/", 1.0)]
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.wieght"):
        load_config("tiny", ["data.sources=[{train: a/, wieght: 3}]"])
    with pytest.raises(ConfigError, match=r"data\.sources\[\]\.weight: must be > 0"):
        load_config("tiny", ["data.sources=[{train: a/, weight: 0}]"])
    with pytest.raises(ConfigError, match=r"either data\.train or data\.sources"):
        load_config("tiny", ["data.train=x/", "data.sources=[{train: a/}]"])
