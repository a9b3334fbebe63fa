"""Training and loading the WordPiece tokenizer the text encoder reads.

Saved in the Hugging Face format (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``), so
a saved ``bert-base-uncased`` folder loads the same way. Loading uses the ``tokenizers`` library
alone: importing ``transformers`` costs seconds in every Ray Data worker process. Nothing is ever
fetched from a hub.
"""

from __future__ import annotations

import functools
import heapq
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.processors import BertProcessing

from mmpretrain.data.shards import expand_shards, iter_shard

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def txt_caption(members: dict[str, bytes]) -> str | None:
    """The ``txt`` member of a sample as text (the default caption of a shard)."""
    raw = members.get("txt")
    return raw.decode("utf-8", errors="replace") if raw is not None else None


def iter_captions(
    shards: str | Sequence[str],
    *,
    limit: int | None = None,
    seed: int | None = None,
    caption_of: Callable[[dict[str, bytes]], str | None] = txt_caption,
) -> Iterator[str]:
    """Captions of ``shards`` (a pattern, or shard paths), at most ``limit`` of them.

    With a ``seed`` the shards are read in a seeded shuffled order, so a bounded sample draws
    on the whole data set rather than its first shards (often one crawl's worth of one site),
    and the same seed reads the same sample. ``caption_of`` picks a sample's caption, None or
    empty to skip the sample.
    """
    paths = expand_shards(shards) if isinstance(shards, str) else list(dict.fromkeys(shards))
    if seed is not None:
        random.Random(seed).shuffle(paths)
    taken = 0
    for path in paths:
        for _, members in iter_shard(path):
            if limit is not None and taken >= limit:
                return
            caption = caption_of(members)
            if caption:
                taken += 1
                yield caption


def train_tokenizer(
    pattern: str,
    out_dir: str | Path,
    vocab_size: int = 1000,
    *,
    max_captions: int | None = None,
    seed: int | None = None,
) -> Path:
    """Trains a lower-casing BERT WordPiece tokenizer on the captions of the shards.

    ``max_captions`` bounds the captions read (a seeded sample when ``seed`` is given).
    """
    captions = iter_captions(pattern, limit=max_captions, seed=seed)
    return train_tokenizer_on(captions, out_dir, vocab_size)


def train_tokenizer_on(captions: Iterable[str], out_dir: str | Path, vocab_size: int) -> Path:
    """Trains the WordPiece tokenizer on ``captions`` and saves it in Hugging Face form."""
    from tokenizers import BertWordPieceTokenizer

    vocab = learn_wordpiece_vocab(captions, vocab_size)
    wordpiece = BertWordPieceTokenizer({token: i for i, token in enumerate(vocab)}, lowercase=True)
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


def learn_wordpiece_vocab(captions: Iterable[str], vocab_size: int) -> list[str]:
    """A WordPiece vocabulary (in id order) learnt from ``captions``, the same in every process.

    The algorithm of the Hugging Face WordPiece trainer: BERT's normalisation and word split,
    every character as a start piece and (``##``-prefixed) as a piece inside a word, then the
    most frequent adjacent pair of pieces merged into a new piece until ``vocab_size``. There,
    hash-map order sets the ids and breaks ties between equally frequent pairs, so two runs on
    the same captions give different vocabularies; here ties go to the pair first in text order,
    and a seeded caption sample gives one tokenizer.
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, splitter = BertNormalizer(lowercase=True), BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for caption in captions:
        word_counts.update(
            w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(caption))
        )
    words = sorted(word_counts)
    counts = [word_counts[word] for word in words]
    pieces = [[word[0], *(f"##{ch}" for ch in word[1:])] for word in words]
    vocab = list(SPECIAL_TOKENS)
    known = set(vocab)

    def add(token: str) -> None:
        if token not in known:
            known.add(token)
            vocab.append(token)

    for token in sorted({ch for word in words for ch in word}):
        add(token)
    for token in sorted({piece for word in pieces for piece in word[1:]}):
        add(token)

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words that had it
    for index, word in enumerate(pieces):
        for pair in pairwise(word):
            pair_counts[pair] += counts[index]
            holders[pair].add(index)
    queue = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(queue)
    while len(vocab) < vocab_size and queue:
        negative, pair = heapq.heappop(queue)
        if pair_counts.get(pair) != -negative:
            continue  # a stale entry: the pair's count changed and was queued again
        first, second = pair
        merged = first + second[2:]  # the second piece is inside a word: "##..."
        add(merged)
        changed: set[tuple[str, str]] = set()
        for index in holders.pop(pair):
            word, count = pieces[index], counts[index]
            for old in pairwise(word):
                pair_counts[old] -= count
                changed.add(old)
            joined, at = [], 0
            while at < len(word):
                if at + 1 < len(word) and word[at] == first and word[at + 1] == second:
                    joined.append(merged)
                    at += 2
                else:
                    joined.append(word[at])
                    at += 1
            pieces[index] = joined
            for new in pairwise(joined):
                pair_counts[new] += count
                holders[new].add(index)
                changed.add(new)
        for other in changed:
            if pair_counts[other] > 0:
                heapq.heappush(queue, (-pair_counts[other], other))
            else:
                del pair_counts[other]
    return vocab


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
