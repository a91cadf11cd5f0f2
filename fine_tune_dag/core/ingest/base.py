"""What every source reader shares: the file it is handed, what it gives back, its errors and settings.

A reader is a function `SourceFile -> Extraction`, one module per kind of source (mail, chat, web, ebook), in
the manner of datatrove's readers. Each turns one file's bytes into the author's text, deterministically, and
raises `NoteParseError` naming the file and the reason when it cannot. Collections (a mailbox, a chat export)
become one note whose messages or conversations are `## ` sections: each file stays one partition, and
chunking splits at the sections while passages stay exact spans of the note's text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any, Callable

from charset_normalizer import from_bytes

SOURCE_KINDS = ("note", "mail", "chat", "web", "ebook")
# Short notes are ambiguous to charset detection; among nearly as good guesses prefer the
# legacy encodings Western notes are overwhelmingly written in.
_PREFERRED_LEGACY_ENCODINGS = ("cp1252", "latin_1")
_PREFERRED_ENCODING_CHAOS_MARGIN = 0.15
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # Unicode Cc, less whitespace
_CONTROL_CHAR_SHARE = 0.02


class NoteParseError(ValueError):
    """A note that cannot become text; names the file so the author knows what to fix."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both args, so the error survives pickling across processes
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _names(text: str) -> tuple[str, ...]:
    return tuple(part for part in (" ".join(p.split()) for p in text.split(",")) if part)


@dataclass(frozen=True)
class SourceSettings:
    """Who the author is in sources that mix their words with other people's (mail, chat)."""

    author_addresses: tuple[str, ...] = field(
        default=(),
        metadata={"help": "the e-mail addresses you write from: only messages sent from them are your text"},
    )
    author_names: tuple[str, ...] = field(
        default=(),
        metadata={"help": "your name as chat exports show it (Telegram, WhatsApp): only those messages are your text"},
    )
    conversation_gap_minutes: float = field(
        default=240.0, metadata={"help": "a chat silence longer than this starts a new conversation"}
    )

    def __post_init__(self) -> None:
        if self.conversation_gap_minutes <= 0:
            raise ValueError("conversation_gap_minutes must be positive")

    @classmethod
    def from_lists(cls, addresses: str, names: str, conversation_gap_minutes: float = 240.0) -> SourceSettings:
        """From comma-separated lists, as environment variables and resource config hold them."""
        return cls(_names(addresses.lower()), _names(names), conversation_gap_minutes)

    def is_author_address(self, address: str) -> bool:
        return address.strip().lower() in self.author_addresses

    def is_author_name(self, name: str) -> bool:
        return " ".join(name.split()).casefold() in {n.casefold() for n in self.author_names}


@dataclass(frozen=True)
class SourceFile:
    """One file as a reader gets it: its bytes, read once, and where it lives (for error messages)."""

    path: Path
    relative: str
    data: bytes
    settings: SourceSettings = SourceSettings()


@dataclass(frozen=True)
class Extraction:
    text: str
    metadata: dict[str, Any]
    title: str | None = None  # the format's own title (front matter, document properties, heading, subject)
    encoding: str | None = None
    source_kind: str = "note"
    format: str | None = None  # when the content decides it (a WhatsApp export among .txt files)
    # other people's words kept beside the author's (the chat lines each reply answered): for Q&A, never text
    context: tuple[dict[str, Any], ...] = ()
    collection: bool = False  # many documents in one file: the one-note length limit does not apply


Reader = Callable[[SourceFile], Extraction]


def describe(error: Exception) -> str:
    """Library messages on one line; some libraries raise with no message at all."""
    return " ".join(str(error).split()) or type(error).__name__


def jsonable(value: Any) -> Any:
    """Metadata goes into JSON columns and Dagster metadata, so YAML/document types are converted."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def sectioned_text(sections: list[tuple[str, list[str]]]) -> tuple[str, list[list[tuple[int, int]]]]:
    """'## heading' then its paragraphs, per section (chunking opens a passage at every heading); with the span of
    each paragraph in the text, so what is kept beside a paragraph can point at it."""
    parts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    offset = 0
    for heading, paragraphs in sections:
        parts.append(f"## {' '.join(heading.split())}\n\n")
        offset += len(parts[-1])
        spans.append([])
        for index, paragraph in enumerate(paragraphs):
            if index:
                parts.append("\n\n")
                offset += 2
            parts.append(paragraph)
            spans[-1].append((offset, offset + len(paragraph)))
            offset += len(paragraph)
        parts.append("\n\n")
        offset += 2
    return "".join(parts).rstrip("\n"), spans


def decode_text(data: bytes, relative: str) -> tuple[str, str]:
    """(text with '\\n' newlines, encoding): BOMs first, then UTF-8, then a detected legacy encoding."""
    if data.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif b"\x00" in data:
        raise NoteParseError(relative, "looks like binary data, not text (contains NUL bytes)")
    else:
        encoding = "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        if encoding != "utf-8":
            reason = f"has a byte-order mark but is not valid {encoding}: {describe(error)}"
            raise NoteParseError(relative, reason) from error
        text, encoding = _detect_legacy_encoding(data, relative)
    if "\x00" in text or len(_CONTROL_CHARS.findall(text)) > len(text) * _CONTROL_CHAR_SHARE:
        raise NoteParseError(relative, "looks like binary data, not text (control characters)")
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding


def _detect_legacy_encoding(data: bytes, relative: str) -> tuple[str, str]:
    """Charset detection is unreliable on short notes; a Western guess close to the best one wins."""
    matches = list(from_bytes(data))
    if not matches:
        raise NoteParseError(relative, "looks like binary data, not text (no plausible encoding)")
    best = min(matches, key=lambda m: (m.chaos, -m.coherence))
    preferred = [
        m
        for m in matches
        if m.encoding in _PREFERRED_LEGACY_ENCODINGS and m.chaos <= best.chaos + _PREFERRED_ENCODING_CHAOS_MARGIN
    ]
    chosen = min(preferred, key=lambda m: _PREFERRED_LEGACY_ENCODINGS.index(m.encoding)) if preferred else best
    return str(chosen), chosen.encoding
