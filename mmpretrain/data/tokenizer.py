"""Training and loading the WordPiece tokenizer the text encoder reads.

Saved in the Hugging Face format (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``), so
a saved ``bert-base-uncased`` folder loads the same way. Loading uses the ``tokenizers`` library
alone: importing ``transformers`` costs seconds in every Ray Data worker process. Nothing is ever
fetched from a hub.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.processors import BertProcessing

from mmpretrain.data.shards import expand_shards, iter_shard

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def iter_captions(pattern: str) -> Iterator[str]:
    for path in expand_shards(pattern):
        for _, members in iter_shard(path):
            if "txt" in members:
                yield members["txt"].decode("utf-8", errors="replace")


def train_tokenizer(pattern: str, out_dir: str | Path, vocab_size: int = 1000) -> Path:
    """Trains a lower-casing BERT WordPiece tokenizer on the captions of the shards."""
    from tokenizers import BertWordPieceTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        iter_captions(pattern),
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        min_frequency=1,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wordpiece.post_processor = BertProcessing(
        ("[SEP]", wordpiece.token_to_id("[SEP]")), ("[CLS]", wordpiece.token_to_id("[CLS]"))
    )
    wordpiece.save(str(out / "tokenizer.json"))
    wordpiece.save_model(str(out))  # vocab.txt, for BERT loaders that want it
    special = dict(
        zip(
            ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
            SPECIAL_TOKENS,
            strict=True,
        )
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, **special}, indent=2)
    )
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out


@dataclass(frozen=True)
class CaptionTokenizer:
    """A BERT-style tokenizer with the special ids MLM and padding need."""

    backend: Tokenizer
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, captions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(input_ids, attention_mask)``, both int64 ``[len(captions), max_len]``."""
        ids = np.full((len(captions), max_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(captions), max_len), dtype=np.int64)
        for row, encoding in enumerate(self.backend.encode_batch(list(captions))):
            tokens = encoding.ids
            if len(tokens) > max_len:  # keep [CLS] ... and end with [SEP]
                tokens = [*tokens[: max_len - 1], self.sep_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def _backend_from_folder(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    if (folder / "vocab.txt").is_file():
        from tokenizers import BertWordPieceTokenizer

        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        lowercase = bool(config.get("do_lower_case", True))
        return BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lowercase)._tokenizer
    raise FileNotFoundError(
        f"data.tokenizer: {str(folder)!r} is not a tokenizer folder (no tokenizer.json or "
        "vocab.txt); make one with `mmpretrain tokenizer train`"
    )


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str) -> CaptionTokenizer:
    """Loads a tokenizer folder once per process (Ray Data tasks reuse their worker process)."""
    backend = _backend_from_folder(Path(path).expanduser())
    backend.no_truncation()
    backend.no_padding()
    ids = {token: backend.token_to_id(token) for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise ValueError(
            f"data.tokenizer: {path!r} lacks {missing}; a BERT-style tokenizer "
            "with [PAD], [CLS], [SEP] and [MASK] is required"
        )
    if backend.post_processor is None:  # vocab-only folders: wrap captions as BERT does
        backend.post_processor = BertProcessing(("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"]))
    return CaptionTokenizer(
        backend,
        pad_id=ids["[PAD]"],
        cls_id=ids["[CLS]"],
        sep_id=ids["[SEP]"],
        mask_id=ids["[MASK]"],
    )
