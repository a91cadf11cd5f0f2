"""What changed in the notes folder since the last look, without parsing anything.

The sensor calls `scan_notes` every tick. A file is hashed only when its size or modification
time moved, and only once it has settled (same size and mtime on two looks, or untouched for
`settle_seconds`), so a note still being written or synced is never half-read.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from fine_tune_dag.core.text.ingest import discover_notes, key_of_note

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    sha256: str = ""


@dataclass
class WatchCursor:
    """Relative path → what the last tick saw: `known` files were handed on, `settling` ones not yet."""

    known: dict[str, FileState] = field(default_factory=dict)
    settling: dict[str, FileState] = field(default_factory=dict)

    def to_json(self) -> str:
        def pack(states: dict[str, FileState]) -> dict[str, list]:
            return {path: [s.size, s.mtime_ns, s.sha256] for path, s in sorted(states.items())}

        return json.dumps({"known": pack(self.known), "settling": pack(self.settling)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> WatchCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            known={path: FileState(*values) for path, values in data.get("known", {}).items()},
            settling={path: FileState(*values) for path, values in data.get("settling", {}).items()},
        )


@dataclass(frozen=True)
class NoteChange:
    note_id: str
    path: str
    sha256: str


@dataclass
class NotesScan:
    added: list[NoteChange]
    changed: list[NoteChange]
    deleted: list[NoteChange]
    waiting: list[str]  # still being written: looked at again next tick
    deferred: int  # settled but over this tick's batch: taken next tick
    cursor: WatchCursor

    @property
    def summary(self) -> str:
        return (
            f"{len(self.added)} new, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{len(self.waiting)} still being written, {self.deferred} left for the next tick"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_notes(
    notes_dir: Path,
    previous: WatchCursor,
    max_files: int = 100,
    settle_seconds: float = 10.0,
    now: float | None = None,
) -> NotesScan:
    """New, changed and deleted notes since `previous`; at most `max_files` files are hashed per call."""
    now = time.time() if now is None else now
    cursor = WatchCursor(known=dict(previous.known))
    added: list[NoteChange] = []
    changed: list[NoteChange] = []
    waiting: list[str] = []
    deferred = hashed = 0
    present: set[str] = set()
    root = notes_dir.absolute()
    notes = discover_notes(notes_dir)
    for note_id, path in notes.items():
        relative = path.relative_to(root).as_posix()
        try:
            stat = path.stat()
        except OSError:
            try:
                stat = path.lstat()  # a link that leads nowhere readable (loop, dangling): raw_notes says why
            except OSError:  # vanished since the listing: gone for this tick
                continue
        present.add(relative)
        seen = FileState(stat.st_size, stat.st_mtime_ns)
        before = previous.known.get(relative)
        if before is not None and (before.size, before.mtime_ns) == (seen.size, seen.mtime_ns):
            continue
        last_look = previous.settling.get(relative)
        settled = (last_look is not None and last_look == seen) or now - stat.st_mtime_ns / 1e9 >= settle_seconds
        if not settled:
            cursor.settling[relative] = seen
            waiting.append(relative)
            continue
        if hashed >= max_files:
            cursor.settling[relative] = seen
            deferred += 1
            continue
        hashed += 1
        try:
            digest = file_sha256(path)
        except OSError as error:  # unreadable: hand it on so raw_notes reports why, on its partition
            digest = f"unreadable:{seen.size}:{seen.mtime_ns}:{error.errno}"
        cursor.known[relative] = FileState(seen.size, seen.mtime_ns, digest)
        if before is None:
            added.append(NoteChange(note_id, relative, digest))
        elif before.sha256 != digest:
            changed.append(NoteChange(note_id, relative, digest))
    deleted = [
        NoteChange(key_of_note(relative, notes), relative, state.sha256)
        for relative, state in previous.known.items()
        if relative not in present
    ]
    for change in deleted:
        del cursor.known[change.path]
    return NotesScan(added, changed, deleted, waiting, deferred, cursor)
