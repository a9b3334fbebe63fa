"""A run directory on a local disk, a shared file system or an object store, behind one API.

``train.storage_path`` may be a path or a URI (``s3://``, ``gs://``, ``file://``). Ray Train
writes checkpoints there through pyarrow's file systems; resume, retention and the checkpoint
checks read them back the same way, so one code path serves every kind of storage. The
JSON-lines logs a run writes are read back here too, by the report and the sweep results.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from mmpretrain.errors import ReportError


def is_uri(location: str) -> bool:
    return "://" in location


class Folder:
    """A file or folder inside a pyarrow file system, named as the user gave it."""

    def __init__(self, fs: pafs.FileSystem, path: str, display: str) -> None:
        self.fs, self.path, self.display = fs, path, display

    @classmethod
    def of(cls, location: str | Path | Folder) -> Folder:
        if isinstance(location, Folder):
            return location
        text = str(location)
        if is_uri(text):
            fs, path = pafs.FileSystem.from_uri(text)
            return cls(fs, path.rstrip("/"), text.rstrip("/"))
        local = str(Path(text).expanduser().resolve())
        return cls(pafs.LocalFileSystem(), local, local)

    def __truediv__(self, name: str) -> Folder:
        return Folder(self.fs, posixpath.join(self.path, name), f"{self.display}/{name}")

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"Folder({self.display!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folder) and other.display == self.display

    def __hash__(self) -> int:
        return hash(self.display)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def is_local(self) -> bool:
        """A plain path (no URI): readable in place by anything on a node that mounts it."""
        return not is_uri(self.display)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.display} is not a local path")
        return Path(self.path)

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as handle:
            return handle.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_text(self, text: str) -> None:
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        with self.fs.open_output_stream(self.path) as handle:
            handle.write(text.encode())

    def open_input(self):  # -> pyarrow.NativeFile
        return self.fs.open_input_stream(self.path)

    def files(self) -> dict[str, int]:
        """Every file below this folder: relative path -> size."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return {
            posixpath.relpath(info.path, self.path): info.size
            for info in infos
            if info.type == pafs.FileType.File
        }

    def file_names(self) -> list[str]:
        """Names of the files directly in this folder (not below it)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        return [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File]

    def subfolders(self) -> list[Folder]:
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        return [
            self / posixpath.basename(info.path)
            for info in infos
            if info.type == pafs.FileType.Directory
        ]

    def rename(self, new_name: str) -> Folder:
        target = Folder(
            self.fs,
            posixpath.join(posixpath.dirname(self.path), new_name),
            f"{self.display.rsplit('/', 1)[0]}/{new_name}",
        )
        if target.is_dir():
            target.delete()
        self.fs.move(self.path, target.path)
        return target

    def delete(self) -> None:
        if self.is_dir():
            self.fs.delete_dir(self.path)
        elif self.is_file():
            self.fs.delete_file(self.path)

    def download(self, local: Path) -> Path:
        """Copies this folder to ``local`` (a fresh local folder) and returns it."""
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            self.path, str(local), source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )  # fmt: skip
        return local

    def copy_to(self, target: Folder) -> Folder:
        """Copies this folder to ``target`` (any file system: a PBT clone between trials)."""
        target.fs.create_dir(target.path, recursive=True)
        pafs.copy_files(
            self.path, target.path, source_filesystem=self.fs, destination_filesystem=target.fs
        )
        return target

    def upload_file(self, local: Path) -> None:
        """Puts the local file ``local`` at this location."""
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        pafs.copy_files(
            str(local), self.path, source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )  # fmt: skip


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (metrics.jsonl, eval.jsonl, lineage.jsonl); none when the file
    is absent. Blank lines are skipped, and a torn last line (a run killed while writing, or
    still writing) is dropped rather than failing the reader."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ReportError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return rows


def by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log rows in step order, one per step: the last written (a resumed run appends again
    from its checkpoint's step)."""
    latest = {int(row["step"]): row for row in rows if "step" in row}
    return [latest[step] for step in sorted(latest)]
