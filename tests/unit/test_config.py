from __future__ import annotations

from pathlib import Path

import pytest

from mmpretrain.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    describe_fields,
    load_config,
    parse_overrides,
    preset_names,
)


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_loads_and_round_trips(preset: str) -> None:
    cfg = load_config(preset)
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_presets_name_the_seed_model_sizes() -> None:
    assert "tiny" in preset_names() and "base" in preset_names()
    base = load_config("base")
    assert base.model.vision.name == "resnet50" and base.model.vision.depths is None
    assert (base.model.text.hidden_size, base.model.text.layers) == (768, 12)


def test_overrides_apply_with_yaml_types() -> None:
    cfg = load_config(
        "tiny",
        [
            "train.max_steps=50",
            "model.fusion.layers=2",
            "optim.lr=3e-4",
            "model.vision.depths=[2, 2, 2, 2]",
            "data.val=null",
            "train.use_gpu=true",
        ],
    )
    assert cfg.train.max_steps == 50
    assert cfg.model.fusion.layers == 2
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.vision.depths == [2, 2, 2, 2]
    assert cfg.data.val is None
    assert cfg.train.use_gpu is True


def test_overrides_beat_the_preset_and_keep_its_other_values() -> None:
    tiny = load_config("tiny")
    cfg = load_config("tiny", ["train.zero_stage=3"])
    assert cfg.train.zero_stage == 3
    assert cfg.model == tiny.model


def test_integer_widens_to_float_but_not_the_reverse() -> None:
    assert load_config("tiny", ["optim.grad_clip=2"]).optim.grad_clip == 2.0
    with pytest.raises(ConfigError, match=r"train\.max_steps: got .*; allowed: an integer"):
        load_config("tiny", ["train.max_steps=2.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trian.max_steps=1", r"trian: got unknown key; allowed keys: data, model,"),
        (
            "train.max_step=1",
            r"train\.max_step: got unknown key; allowed keys: .*max_steps",
        ),
        ("train.zero_stage=4", r"train\.zero_stage: got 4; allowed values are \[0, 1, 2, 3\]"),
        ("train.precision=fp8", r"train\.precision: got 'fp8'; allowed values are"),
        ("model.vision.name=vit_b_16", r"model\.vision\.name: got 'vit_b_16'; allowed values"),
        ("optim.lr=fast", r"optim\.lr: got 'fast'; allowed: a number"),
        # Keys that moved to sections of their own name the new key.
        ("train.lr=1e-3", r"train\.lr: got a moved key; it is now optim\.lr; write optim\.lr="),
        ("train.checkpoint_every=5", r"train\.checkpoint_every: .*now checkpoint\.every"),
        ("train.keep_checkpoints=2", r"train\.keep_checkpoints: .*now checkpoint\.keep"),
        ("train.use_gpu=maybe", r"train\.use_gpu: got 'maybe'; allowed: true or false"),
        ("data.batch_size=1", r"data\.batch_size: must be >= 2"),
        ("model.fusion.heads=5", r"model\.fusion\.heads: must divide"),
        ("model.vision.depths=[1, 1]", r"model\.vision\.depths: must be 4 positive ints"),
        ("objectives.mlm_probability=1.5", r"objectives\.mlm_probability"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_all_objective_weights_zero_is_refused() -> None:
    zero = [f"objectives.{name}=0" for name in ("itc", "itm", "mlm", "text_mlm", "image_ssl")]
    with pytest.raises(ConfigError, match=r"at least one of \['itc', 'itm', 'mlm'"):
        load_config("tiny", zero)


def test_malformed_overrides_and_unknown_presets() -> None:
    with pytest.raises(ConfigError, match=r"must look like key\.path=value"):
        parse_overrides(["train.max_steps"])
    with pytest.raises(ConfigError, match="no preset named 'huge'"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")


def test_yaml_file_config(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 7\n  run_name: mine\n")
    cfg = load_config(path, ["train.max_steps=9"])
    assert (cfg.train.max_steps, cfg.train.run_name) == (9, "mine")
    assert cfg.run_dir == Path("runs").resolve() / "mine"


def test_training_needs_data() -> None:
    with pytest.raises(ConfigError, match=r"data\.train"):
        load_config("tiny").check_runnable()


def test_every_field_is_documented() -> None:
    undocumented = [key for key, text in describe_fields() if not text]
    assert undocumented == []


def test_local_paths_become_absolute_and_uris_stay(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        "tiny",
        [
            "data.val=data/{00000..00001}.tar",
            "data.tokenizer=tok",
            "data.sources=[{train: s3://bucket/a/}, {train: b/*.tar}]",
            "train.storage_path=runs",
        ],
    ).with_absolute_paths()
    assert cfg.data.val == f"{tmp_path}/data/{{00000..00001}}.tar"
    assert cfg.data.tokenizer == f"{tmp_path}/tok"
    assert [s.train for s in cfg.data.sources] == ["s3://bucket/a/", f"{tmp_path}/b/*.tar"]
    assert cfg.train.storage_path == f"{tmp_path}/runs"


def test_optim_fused_is_an_on_by_default_boolean() -> None:
    assert load_config("base").optim.fused is True
    assert load_config("tiny", ["optim.fused=false"]).optim.fused is False
    with pytest.raises(ConfigError, match=r"optim\.fused: got .*; allowed: true or false"):
        load_config("tiny", ["optim.fused=fast"])
