"""Driver-side checks and preparation before the first Ray call (no Ray started here).

The pretrained folders are real Hugging Face BERT folders written by transformers, with a real
tokenizer trained by mmpretrain on real synthetic shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel

from mmpretrain.config import ConfigError, load_config
from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.data.tokenizer import iter_captions, load_tokenizer, train_tokenizer
from mmpretrain.model.vision import build_resnet
from mmpretrain.train.preflight import prepare_run

# A MiniLM-like shape, different from every size of the tiny preset (128 / 2 / 2 / 256).
HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 96, 1, 3, 192, 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, 160, shard_size=40, seed=1, image_side=32)
    return out


def write_bert_folder(folder: Path, shards: Path, **sizes: int) -> Path:
    """A BERT folder as save_pretrained writes it, with its own tokenizer beside the weights."""
    train_tokenizer(str(shards), folder, vocab_size=200)
    shape = {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": POSITIONS,
        **sizes,
    }
    vocab = load_tokenizer(str(folder)).vocab_size
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab, **shape), add_pooling_layer=False).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> Path:
    return write_bert_folder(tmp_path_factory.mktemp("minilm"), shards)


def run_overrides(shards: Path, run_root: Path, *extra: str) -> list[str]:
    return [
        f"data.train={shards}",
        f"train.storage_path={run_root}",
        "train.run_name=run",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# A pretrained folder sets the text tower's shape
# ---------------------------------------------------------------------------------------------


def test_tiny_preset_adopts_the_folders_sizes(bert_folder: Path, shards: Path, tmp_path) -> None:
    cfg = load_config("tiny", [f"model.text.pretrained={bert_folder}"])
    text = cfg.model.text
    assert (text.hidden_size, text.layers, text.heads, text.intermediate_size) == (
        HIDDEN,
        LAYERS,
        HEADS,
        INTERMEDIATE,
    )
    assert text.max_positions == POSITIONS
    assert cfg.model.fusion_width == HIDDEN  # fusion.width follows the adopted hidden size
    assert load_config("tiny").model.text.hidden_size == 128  # the preset itself is unchanged

    # A setting that agrees with the folder is fine, and prepare_run takes its tokenizer.
    cfg = load_config(
        "tiny",
        run_overrides(
            shards,
            tmp_path,
            f"model.text.pretrained={bert_folder}",
            f"model.text.hidden_size={HIDDEN}",
            "data.max_text_len=32",
        ),
    )
    prepared = prepare_run(cfg).cfg
    assert prepared.data.tokenizer == str(bert_folder)
    assert not (tmp_path / "run" / "tokenizer").exists()  # nothing trained


def test_an_override_that_disagrees_names_both_values(bert_folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("tiny", [f"model.text.pretrained={bert_folder}", "model.text.hidden_size=128"])
    assert caught.value.located().startswith(
        f"<command line>: model.text.hidden_size: got 128; allowed: {HIDDEN}, the hidden_size "
        f"of model.text.pretrained {str(bert_folder)!r}"
    )


def test_a_user_yaml_that_disagrees_errors_but_a_copied_preset_does_not(
    bert_folder: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        yaml.safe_dump({"model": {"text": {"layers": 4, "pretrained": str(bert_folder)}}})
    )
    with pytest.raises(
        ConfigError, match=rf"model\.text\.layers: got 4; allowed: {LAYERS}, the num_hidden_layers"
    ):
        load_config(mine)
    # The same file without the size adopts the folder's; so does a user YAML that repeats it.
    mine.write_text(yaml.safe_dump({"model": {"text": {"pretrained": str(bert_folder)}}}))
    assert load_config(mine).model.text.layers == LAYERS
    # A run directory's saved config.yaml (adopted sizes) loads back for eval and export.
    saved = tmp_path / "config.yaml"
    saved.write_text(load_config("tiny", [f"model.text.pretrained={bert_folder}"]).to_yaml())
    assert load_config(saved).model.text.hidden_size == HIDDEN


def test_fusion_heads_must_divide_the_adopted_width(bert_folder: Path) -> None:
    with pytest.raises(ConfigError, match=rf"model\.fusion\.heads: 5 heads .* {HIDDEN}"):
        load_config("tiny", [f"model.text.pretrained={bert_folder}", "model.fusion.heads=5"])
    # An explicit fusion width lifts the constraint from the text width.
    cfg = load_config(
        "tiny",
        [f"model.text.pretrained={bert_folder}", "model.fusion.heads=5", "model.fusion.width=80"],
    )
    assert cfg.model.fusion_width == 80


def test_too_few_positions_error_on_the_driver(
    bert_folder: Path, shards: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        "tiny",
        run_overrides(shards, tmp_path, f"model.text.pretrained={bert_folder}"),  # tiny: 32
    )
    prepare_run(cfg)
    too_long = load_config(
        "tiny",
        run_overrides(
            shards, tmp_path, f"model.text.pretrained={bert_folder}", "data.max_text_len=48"
        ),
    )
    with pytest.raises(
        ConfigError, match=rf"data\.max_text_len=48 exceeds the max_position_embeddings={POSITIONS}"
    ):
        prepare_run(too_long)
    without_folder = load_config(
        "tiny", run_overrides(shards, tmp_path, "model.text.max_positions=16")
    )
    with pytest.raises(ConfigError, match=r"model\.text\.max_positions=16"):
        prepare_run(without_folder)


def test_pretrained_folder_checks(bert_folder: Path, shards: Path, tmp_path: Path) -> None:
    def prepare(folder: Path, *extra: str):
        cfg = load_config(
            "tiny", run_overrides(shards, tmp_path, f"model.text.pretrained={folder}", *extra)
        )
        return prepare_run(cfg)

    with pytest.raises(ConfigError, match=r"model\.text\.pretrained: .* is not a folder"):
        prepare(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"model\.text\.pretrained: .* \(no config\.json\)"):
        prepare(empty)

    # Not a BERT: same files, another architecture.
    roberta = write_bert_folder(tmp_path / "roberta", shards)
    config = json.loads((roberta / "config.json").read_text())
    (roberta / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ConfigError, match=r"model_type='roberta'; a BERT architecture"):
        prepare(roberta)

    # A folder whose weights file is gone.
    no_weights = write_bert_folder(tmp_path / "no_weights", shards)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no weights file \(model\.safetensors or pytorch"):
        prepare(no_weights)

    # Weights that do not match their own config.json (another vocabulary).
    mixed = write_bert_folder(tmp_path / "mixed", shards)
    other = write_bert_folder(tmp_path / "other", shards, hidden_size=48, num_attention_heads=3)
    (mixed / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match=r"word embeddings .* found of shape \[\d+, 48\]"):
        prepare(mixed)

    # A tokenizer that is not the model's: the vocabulary differs.
    other_tokenizer = train_tokenizer(str(shards), tmp_path / "tok", vocab_size=120)
    with pytest.raises(ConfigError, match=r"data\.tokenizer .* has \d+ tokens but .* vocab_size"):
        prepare(bert_folder, f"data.tokenizer={other_tokenizer}")

    # A model without a tokenizer of its own, and none given.
    bare = write_bert_folder(tmp_path / "bare", shards)
    for name in ("tokenizer.json", "vocab.txt"):
        (bare / name).unlink()
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: .* no tokenizer of its own"):
        prepare(bare)
    # ... which is fine once data.tokenizer names the one it was trained with.
    assert prepare(bare, f"data.tokenizer={bert_folder}").cfg.data.tokenizer == str(bert_folder)


# ---------------------------------------------------------------------------------------------
# Vision start-from weights
# ---------------------------------------------------------------------------------------------


def test_vision_weights_are_checked_against_the_configured_resnet(
    shards: Path, tmp_path: Path
) -> None:
    tokenizer = train_tokenizer(str(shards), tmp_path / "tok", vocab_size=150)
    base = run_overrides(shards, tmp_path, f"data.tokenizer={tokenizer}")
    tiny = load_config("tiny", base)
    good = tmp_path / "tiny_resnet.pth"
    torch.save(build_resnet(tiny.model.vision).state_dict(), good)
    prepare_run(load_config("tiny", [*base, f"model.vision.weights={good}"]))

    # resnet18 at torchvision's depths [2, 2, 2, 2] has blocks the tiny [1, 1, 1, 1] lacks.
    with pytest.raises(ConfigError) as caught:
        prepare_run(
            load_config("tiny", [*base, f"model.vision.weights={good}", "model.vision.depths=null"])
        )
    message = str(caught.value)
    assert message.startswith("model.vision.weights:")
    assert "first mismatching key 'layer1.1.conv1.weight' (in the model, not in the file)" in (
        message
    )

    # A Bottleneck ResNet's file against the BasicBlock resnet18: shapes differ at once.
    wide = tmp_path / "resnet50.pth"
    torch.save(build_resnet(load_config("base").model.vision).state_dict(), wide)
    with pytest.raises(
        ConfigError, match=r"first mismatching key 'layer1\.0\.conv1\.weight' \(shape"
    ):
        prepare_run(load_config("tiny", [*base, f"model.vision.weights={wide}"]))

    with pytest.raises(ConfigError, match=r"model\.vision\.weights: .* is not a file"):
        prepare_run(load_config("tiny", [*base, f"model.vision.weights={tmp_path / 'nope.pth'}"]))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"model\.vision\.weights: cannot read"):
        prepare_run(load_config("tiny", [*base, f"model.vision.weights={garbage}"]))


# ---------------------------------------------------------------------------------------------
# A tokenizer when none is given
# ---------------------------------------------------------------------------------------------


def test_tokenizer_is_trained_into_the_run_directory_and_reused(
    shards: Path, tmp_path: Path, capsys
) -> None:
    cfg = load_config("tiny", run_overrides(shards, tmp_path, "data.tokenizer_captions=60"))
    prepared = prepare_run(cfg).cfg
    folder = tmp_path / "run" / "tokenizer"
    assert prepared.data.tokenizer == str(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "vocab.txt").is_file()
    vocab = load_tokenizer(str(folder)).vocab_size
    first = capsys.readouterr().out
    assert (
        f"trained on 60 training captions (data.tokenizer_captions=60, seed 0), {vocab} tokens"
        in (first)
    )
    assert str(folder) in first
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["tokenizer"]  # no scratch left

    # The resolved config, as saved in the run directory, names the trained tokenizer.
    saved = tmp_path / "config.yaml"
    saved.write_text(prepared.to_yaml())
    assert load_config(saved).data.tokenizer == str(folder)

    # A resumed run reuses it and says so; nothing is rewritten.
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    again = prepare_run(cfg).cfg
    assert again.data.tokenizer == str(folder)
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    assert f"reusing this run's, in {folder} ({vocab} tokens)" in capsys.readouterr().out

    # A given data.tokenizer is used as it is.
    given = train_tokenizer(str(shards), tmp_path / "given", vocab_size=150)
    explicit = load_config(
        "tiny", run_overrides(shards, tmp_path / "other", f"data.tokenizer={given}")
    )
    assert prepare_run(explicit).cfg.data.tokenizer == str(given)
    assert not (tmp_path / "other" / "run" / "tokenizer").exists()


def test_tokenizer_sample_is_bounded_and_seeded(shards: Path, tmp_path: Path) -> None:
    def vocab_of(root: Path, *extra: str) -> dict[str, int]:
        cfg = load_config("tiny", run_overrides(shards, root, "data.tokenizer_captions=30", *extra))
        return load_tokenizer(prepare_run(cfg).cfg.data.tokenizer).backend.get_vocab()

    assert vocab_of(tmp_path / "a") == vocab_of(tmp_path / "b")  # same seed, same vocabulary

    # The sample: bounded, seeded, drawn across shards (4 shards of 40, in shuffled order).
    sample = list(iter_captions(str(shards), limit=30, seed=0))
    assert len(sample) == 30
    assert sample == list(iter_captions(str(shards), limit=30, seed=0))
    starts = {next(iter_captions(str(shards), limit=1, seed=seed)) for seed in range(6)}
    assert len(starts) > 1  # different seeds start from different shards
    assert len(list(iter_captions(str(shards)))) == 160  # unbounded reads them all

    # The bound shows in what is learnt: 1 caption knows fewer words than 160 do.
    few = vocab_of(tmp_path / "c", "data.tokenizer_captions=1")
    many = vocab_of(tmp_path / "d", "data.tokenizer_captions=160")
    assert len(few) < len(many)


def test_tokenizer_config_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"data\.tokenizer_captions: must be >= 1"):
        load_config("tiny", ["data.tokenizer_captions=0"])
    with pytest.raises(ConfigError, match=r"data\.tokenizer_vocab_size: must be >= 100"):
        load_config("tiny", ["data.tokenizer_vocab_size=10"])


def test_no_tokenizer_with_object_store_storage_is_refused(shards: Path, tmp_path: Path) -> None:
    # file:// goes through pyarrow like s3:// and gs:// do, without a network.
    cfg = load_config(
        "tiny",
        [f"data.train={shards}", f"train.storage_path=file://{tmp_path}", "train.run_name=r"],
    )
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: required when train\.storage_path"):
        prepare_run(cfg)
