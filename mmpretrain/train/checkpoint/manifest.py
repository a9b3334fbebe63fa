"""The checkpoint manifest: what makes a checkpoint complete, checked before any resume.

Every rank hashes the files it wrote; rank 0 gathers the lists and writes ``manifest.json``
after its own files. Ray copies each rank's folder into the one checkpoint directory, so the
manifest may land before another rank's files do; that is why completeness is not "the
manifest exists" but "the manifest exists and every file it lists is there with its size and
checksum". A checkpoint cut short by a crash, a full disk or a damaged copy therefore fails the
check and is never resumed from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpretrain.storage import Folder

MANIFEST = "manifest.json"
STATE_FILE = "train_state.json"  # the TrainState of the checkpoint, written by rank 0
MANIFEST_VERSION = 1
CHUNK = 1 << 22


def file_digest(path: Path | Folder) -> str:
    digest = hashlib.sha256()
    with Folder.of(path).open_input() as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256}}`` of every file under ``folder`` but the manifest."""
    return {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(
    folder: Path, files: dict[str, dict[str, Any]], facts: dict[str, Any]
) -> dict[str, Any]:
    """Writes the manifest (atomically: temp file, then rename) and returns it."""
    manifest = {"version": MANIFEST_VERSION, **facts, "files": files}
    temporary = folder / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2))
    temporary.replace(folder / MANIFEST)
    return manifest


@dataclass(frozen=True)
class CheckpointStatus:
    path: Folder
    complete: bool
    reason: str  # why it is incomplete; "" when complete
    manifest: dict[str, Any] | None

    @property
    def step(self) -> int | None:
        if self.manifest is not None:
            return int(self.manifest["step"])
        suffix = self.path.name.rsplit("_", 1)[-1]
        return int(suffix) if suffix.isdigit() else None

    @property
    def size_bytes(self) -> int:
        return sum(self.path.files().values())


def check_checkpoint(
    location: Path | str | Folder, verify_checksums: bool = True
) -> CheckpointStatus:
    """Whether ``location`` is a complete checkpoint; the reason names the first failing file."""
    folder = Folder.of(location)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return CheckpointStatus(folder, False, "no manifest (the save never finished)", None)
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return CheckpointStatus(folder, False, f"unreadable manifest: {exc}", None)
    present = folder.files()
    for name, expected in files.items():
        if name not in present:
            return CheckpointStatus(folder, False, f"{name} is missing", manifest)
        size = present[name]
        if size != expected["size"]:
            reason = f"{name} has {size} bytes, the manifest says {expected['size']}"
            return CheckpointStatus(folder, False, reason, manifest)
        if verify_checksums and file_digest(folder / name) != expected["sha256"]:
            return CheckpointStatus(folder, False, f"{name} fails its checksum", manifest)
    return CheckpointStatus(folder, True, "", manifest)


def list_checkpoints(
    run_dir: Path | str | Folder, verify_checksums: bool = True
) -> list[CheckpointStatus]:
    """Every ``checkpoint_step_*`` folder of a run, newest first, with its status."""
    folders = sorted(
        (
            f
            for f in Folder.of(run_dir).subfolders()
            if f.name.startswith("checkpoint_step_") and f.name.rsplit("_", 1)[-1].isdigit()
        ),
        key=lambda f: f.name,
        reverse=True,
    )  # "checkpoint_step_00000072.incomplete" (set aside) is not a checkpoint any more
    return [check_checkpoint(folder, verify_checksums) for folder in folders]


def newest_complete(
    run_dir: Path | str | Folder,
) -> tuple[CheckpointStatus | None, list[CheckpointStatus]]:
    """The newest complete checkpoint, and the newer ones passed over for being incomplete."""
    skipped = []
    for status in list_checkpoints(run_dir):
        if status.complete:
            return status, skipped
        skipped.append(status)
    return None, skipped


def set_aside(status: CheckpointStatus) -> Folder:
    """Renames an incomplete checkpoint out of the way (kept for inspection, never resumed), so
    the step it names can be saved again under its proper name."""
    return status.path.rename(status.path.name + ".incomplete")


def prune_checkpoints(run_dir: Path | str | Folder, keep: int) -> list[Folder]:
    """Deletes checkpoints older than the newest ``keep`` complete ones; returns what went.

    Sizes are checked but not checksums (that would re-read every checkpoint at every save).
    A checkpoint still being written by another rank counts as incomplete and is newer than
    everything kept, so it is never touched.
    """
    statuses = list_checkpoints(run_dir, verify_checksums=False)
    complete = [s for s in statuses if s.complete]
    if len(complete) <= keep:
        return []
    oldest_kept = complete[keep - 1].path.name
    doomed = [s.path for s in statuses if s.path.name < oldest_kept]
    for folder in doomed:
        folder.delete()
    return doomed


def format_listing(statuses: list[CheckpointStatus]) -> str:
    """The ``mmpretrain checkpoints list`` table, newest first."""
    if not statuses:
        return "no checkpoints"
    lines = [f"{'checkpoint':<26}{'step':>8}{'size MB':>10}  {'world':>5}  status"]
    for status in statuses:
        world = status.manifest.get("world_size", "?") if status.manifest else "?"
        verdict = "complete" if status.complete else f"INCOMPLETE: {status.reason}"
        step = status.step if status.step is not None else "?"
        lines.append(
            f"{status.path.name:<26}{step:>8}{status.size_bytes / 2**20:>10.1f}  {world:>5}  "
            f"{verdict}"
        )
    return "\n".join(lines)
