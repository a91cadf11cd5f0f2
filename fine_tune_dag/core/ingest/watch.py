"""What changed in the notes folder since the last look, without parsing anything.

The sensor calls `scan_notes` every tick. A file is hashed only when its size or modification
time moved (or it could not be opened last time), and only once it has settled (same size and
mtime on two looks, or untouched for `settle_seconds`), so a note still being written or synced
is never half-read.

Some files are never opened at all, because raw_notes refuses them unread: a link that leads out of
the notes folder (the folder is what the author chose to share), a file over `MAX_NOTE_BYTES`, and
anything that is not a regular file (opening a pipe would block the sensor). They are still handed
on, so raw_notes fails their partition with the reason; their identity in the cursor is made of the
file's own size and mtime (the link's, for a link), never of anything behind it.

Files of a type that is not read are never skipped silently: each scan lists them with the reason, and the
cursor remembers which were already reported, so the sensor names each once.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from fine_tune_dag.core.ingest import notes as ingest
from fine_tune_dag.core.ingest.notes import key_of_note, link_target_outside, survey_notes

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    sha256: str = ""  # or, for a file that is not read, "<why>:<size>:<mtime_ns>" (`_Look.identity`)


@dataclass
class WatchCursor:
    """Relative path → what the last tick saw: `known` files were handed on, `settling` ones not yet."""

    known: dict[str, FileState] = field(default_factory=dict)
    settling: dict[str, FileState] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)  # files of a type not read, already reported

    def to_json(self) -> str:
        def pack(states: dict[str, FileState]) -> dict[str, list]:
            return {path: [s.size, s.mtime_ns, s.sha256] for path, s in sorted(states.items())}

        packed = {"known": pack(self.known), "settling": pack(self.settling), "unsupported": sorted(self.unsupported)}
        return json.dumps(packed, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> WatchCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            known={path: FileState(*values) for path, values in data.get("known", {}).items()},
            settling={path: FileState(*values) for path, values in data.get("settling", {}).items()},
            unsupported=list(data.get("unsupported", [])),
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
    unsupported: dict[str, str] = field(default_factory=dict)  # relative path → why it is not read
    newly_unsupported: list[str] = field(default_factory=list)  # of those, the ones no earlier scan reported

    @property
    def summary(self) -> str:
        return (
            f"{len(self.added)} new, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{len(self.waiting)} still being written, {self.deferred} left for the next tick, "
            f"{len(self.unsupported)} of a type not read (`fine-tune-dag rejected` lists them)"
        )


@dataclass(frozen=True)
class _Look:
    """What one `lstat`/`stat` says about a note file, and why its bytes must not be read ("" if they may)."""

    size: int
    mtime_ns: int
    unread: str

    def identity(self) -> str:
        """The cursor's stand-in for a digest of a file that is not read: it changes with the file itself."""
        return f"{self.unread}:{self.size}:{self.mtime_ns}"

    def recorded_as(self, state: FileState) -> bool:
        """Whether a cursor entry holds the file as it is now: same size, mtime and reason not to read it.

        A real digest has no colon, so its reason is ""; one that could not be opened is looked at again.
        """
        recorded_unread = state.sha256.partition(":")[0] if ":" in state.sha256 else ""
        return (state.size, state.mtime_ns, recorded_unread) == (self.size, self.mtime_ns, self.unread)


def _look(path: Path, notes_dir: Path) -> _Look:
    """Size, mtime and whether the file may be read, from metadata alone; raises OSError if it vanished.

    A link out of the folder is only `lstat`ed: even its target's size and mtime stay out of the cursor.
    """
    if link_target_outside(path, notes_dir) is not None:
        info = path.lstat()
        return _Look(info.st_size, info.st_mtime_ns, "outside-link")
    try:
        info = path.stat()
    except OSError as error:  # a link that leads nowhere readable (loop, dangling): raw_notes says why
        info = path.lstat()
        return _Look(info.st_size, info.st_mtime_ns, f"unreadable-{error.errno}")
    if not stat.S_ISREG(info.st_mode):
        return _Look(info.st_size, info.st_mtime_ns, "not-a-file")
    if info.st_size > ingest.MAX_NOTE_BYTES:  # looked up per call: one limit for the sensor and raw_notes
        return _Look(info.st_size, info.st_mtime_ns, "too-large")
    return _Look(info.st_size, info.st_mtime_ns, "")


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
    """New, changed and deleted notes since `previous`; at most `max_files` files are handed on per call.

    An entry is looked at again when its size, mtime or reason for not being read moved; a file
    that could not be opened is retried every tick, so fixing its permissions is noticed.
    """
    now = time.time() if now is None else now
    notes, unsupported = survey_notes(notes_dir)
    cursor = WatchCursor(known=dict(previous.known), unsupported=sorted(unsupported))
    added: list[NoteChange] = []
    changed: list[NoteChange] = []
    waiting: list[str] = []
    deferred = handed = 0
    present: set[str] = set()
    root = notes_dir.absolute()
    for note_id, path in notes.items():
        relative = path.relative_to(root).as_posix()
        try:
            look = _look(path, notes_dir)
        except OSError:  # vanished since the listing: gone for this tick
            continue
        present.add(relative)
        seen = FileState(look.size, look.mtime_ns)
        before = previous.known.get(relative)
        if before is not None and look.recorded_as(before):
            continue
        last_look = previous.settling.get(relative)
        settled = (last_look is not None and last_look == seen) or now - look.mtime_ns / 1e9 >= settle_seconds
        if not settled:
            cursor.settling[relative] = seen
            waiting.append(relative)
            continue
        if handed >= max_files:
            cursor.settling[relative] = seen
            deferred += 1
            continue
        handed += 1
        digest = look.identity() if look.unread else _digest_or_reason(path, look)
        cursor.known[relative] = FileState(look.size, look.mtime_ns, digest)
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
    reported = set(previous.unsupported)
    newly_unsupported = [path for path in unsupported if path not in reported]
    return NotesScan(added, changed, deleted, waiting, deferred, cursor, unsupported, newly_unsupported)


def _digest_or_reason(path: Path, look: _Look) -> str:
    """The file's SHA-256; if it cannot be opened, an identity naming why, so raw_notes reports it on its partition."""
    try:
        return file_sha256(path)
    except OSError as error:
        return _Look(look.size, look.mtime_ns, f"unreadable-{error.errno}").identity()
