"""Listing and writing WebDataset tar shards in img2dataset's layout.

img2dataset writes ``00000.tar`` holding ``KEY.jpg``, ``KEY.txt`` and ``KEY.json`` per sample, with
the members of one key next to each other (Ray's ``read_webdataset`` groups members by adjacent
key). Writing tars ourselves with a fixed mtime keeps shards byte-identical for a seed.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import io
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import braceexpand
import pyarrow

from mmpretrain.storage import Folder, is_uri

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class ShardPatternError(FileNotFoundError):
    """A shard pattern that names no readable shard; raised before any Ray work starts."""


def _expand_uri(part: str, pattern: str) -> list[str]:
    """One brace-expanded part of an object-store (s3://, gs://, file://...) pattern."""
    has_glob = any(ch in part for ch in "*?[")
    folder_uri, wanted = part.rsplit("/", 1) if has_glob else (part, None)
    try:
        folder = Folder.of(folder_uri)
        if not has_glob and folder.is_file():
            return [part]
        names = folder.file_names() if folder.is_dir() else None
    except (pyarrow.ArrowInvalid, OSError) as exc:
        raise ShardPatternError(f"shard pattern {pattern!r}: {exc}") from exc
    if names is None:
        raise ShardPatternError(f"shard {part!r} from pattern {pattern!r} does not exist")
    return [
        f"{folder}/{name}"
        for name in sorted(names)
        if (fnmatch.fnmatch(name, wanted) if wanted else name.endswith(SHARD_SUFFIXES))
    ]


def expand_shards(pattern: str) -> list[str]:
    """Resolves a file, folder, glob or brace pattern (``shards/{00000..00009}.tar``) to paths.

    Object-store patterns (``s3://bucket/cc3m/{00000..00331}.tar``, ``gs://...``, ``file://...``)
    are listed through pyarrow's file systems and stay URIs, which Ray Data reads directly.
    Failing here, on the driver, gives the user the pattern back instead of an empty dataset
    error from inside a Ray task minutes later.
    """
    if not pattern:
        raise ShardPatternError("empty shard pattern")
    paths: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        if is_uri(part):
            paths.extend(_expand_uri(part, pattern))
            continue
        path = Path(part).expanduser()
        if path.is_dir():
            paths.extend(str(p) for p in sorted(path.iterdir()) if p.name.endswith(SHARD_SUFFIXES))
        elif any(ch in part for ch in "*?["):
            paths.extend(sorted(glob.glob(str(path))))
        elif path.is_file():
            paths.append(str(path))
        else:
            raise ShardPatternError(f"shard {part!r} from pattern {pattern!r} does not exist")
    if not paths:
        raise ShardPatternError(
            f"shard pattern {pattern!r} matches no shard ({', '.join(SHARD_SUFFIXES)})"
        )
    return [p if is_uri(p) else str(Path(p).resolve()) for p in paths]


def write_shard(path: str | Path, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> int:
    """Writes ``(key, {extension: bytes})`` samples to one tar, members of a key contiguous."""
    count = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for extension, payload in members.items():
                info = tarfile.TarInfo(name=f"{key}.{extension}")
                info.size = len(payload)
                info.mtime = 0
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))
            count += 1
    return count


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``): WebDataset's sample key and member."""
    base = name.rsplit("/", 1)[-1]
    stem, _, extension = base.partition(".")
    return name[: len(name) - len(base)] + stem, extension


def iter_tar_samples(fileobj: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Streams ``(key, {extension: bytes})`` from an open .tar (or .tar.gz) stream.

    Members of a key are grouped while adjacent, as WebDataset requires. On a damaged archive
    the samples before the damage are yielded, then the tar error propagates.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = split_member_name(member.name)
            if member_key != key:  # a new sample starts: the previous one is complete
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            handle = tar.extractfile(member)
            assert handle is not None
            payload = handle.read()
            if len(payload) < member.size:  # stream mode returns short reads silently
                raise tarfile.ReadError(
                    f"member {member.name} cut short ({len(payload)} of {member.size} bytes)"
                )
            members[extension] = payload
    if key is not None:
        yield key, members


def iter_shard(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one shard given as a local path or an object-store URI."""
    if is_uri(str(path)):
        with Folder.of(str(path)).open_input() as handle:
            yield from iter_tar_samples(handle)
        return
    with open(path, "rb") as handle:
        yield from iter_tar_samples(handle)


@functools.lru_cache(maxsize=4096)
def shard_keys(path: str) -> frozenset[str] | None:
    """Sample keys of a local shard, read from the tar headers alone.

    Lets a checkpoint mark a shard finished instead of listing its every key. None for
    object-store URIs (knowing would mean downloading the shard) and damaged archives.
    """
    if is_uri(path):
        return None
    keys: set[str] = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if member.isfile():
                    keys.add(split_member_name(member.name)[0])
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return None
    return frozenset(keys)
