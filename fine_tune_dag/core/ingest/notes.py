"""Note files (Markdown, text, PDF, DOCX) to plain text, one stable partition key per file.

Everything downstream cuts passages as exact spans of `ParsedNote.text`, so the text must be a
deterministic function of the file bytes. Notes are the author's own files: they are only read.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import docx
import yaml
from charset_normalizer import from_bytes
from docx.table import Table
from docx.text.paragraph import Paragraph
from pypdf import PageObject, PasswordType, PdfReader
from pypdf.errors import DependencyError

NOTE_FORMATS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".pdf": "pdf",
    ".docx": "docx",
}

_KEY_SLUG_CHARS = 48
# A note is one document, not a corpus: bigger files are refused with a reason instead of costing
# thousands of LLM calls (characters) or the worker's memory (bytes).
MAX_NOTE_BYTES = 256 * 1024 * 1024
MAX_NOTE_CHARS = 2_000_000
_TITLE_MAX_CHARS = 80
_IGNORED_SUFFIXES = (".swp", ".tmp", "~")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^---[ \t]*(?:\n|\Z)", re.DOTALL | re.MULTILINE)
_ATX_HEADING = re.compile(r"#[ \t]+(\S.*?)(?:[ \t]+#+)?[ \t]*")
_CODE_FENCE = re.compile(r"[ ]{0,3}(?:```|~~~)")
_DOCX_HEADING_STYLE = re.compile(r"Heading ([1-9])")
_SENTENCE_END = re.compile(r"[.!?:;…][\"'”’)\]]*$")
_HYPHENATED = re.compile(r"[^\W\d_]-$")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# Short notes are ambiguous to charset detection; among nearly as good guesses prefer the
# legacy encodings Western notes are overwhelmingly written in.
_PREFERRED_LEGACY_ENCODINGS = ("cp1252", "latin_1")
_PREFERRED_ENCODING_CHAOS_MARGIN = 0.15
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # Unicode Cc, less whitespace
_CONTROL_CHAR_SHARE = 0.02
# Reflow thresholds, as fractions of the typical (90th percentile) PDF line length in characters
# and of the typical (lower quartile) line spacing.
_SENTENCE_END_LINE_SHARE = 0.9
_EARLY_BREAK_LINE_SHARE = 0.6
_PARAGRAPH_SPACING_SHARE = 1.3
_MIN_TYPICAL_LINE_CHARS = 40


class NoteParseError(ValueError):
    """A note that cannot become text; names the file so the author knows what to fix."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both args, so the error survives pickling across processes
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ParsedNote:
    note_id: str
    path: str
    title: str
    format: str
    text: str
    metadata: dict[str, Any]
    sha256: str
    encoding: str | None

    @property
    def char_count(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class _Extraction:
    text: str
    metadata: dict[str, Any]
    title: str | None = None  # the format's own title (front matter, document properties, heading)
    encoding: str | None = None


def note_partition_key(relative_path: str, twin: bool = False) -> str:
    """A readable slug plus a hash of the exact path: valid as a Dagster key, stable, unique per file.

    Two names that differ only in Unicode normalization form are two files on Linux, so the exact
    name is hashed. `twin` is for the rare file whose key is already taken by another path (same
    slug, same 32-bit hash): it hashes a salted name instead, so both keep a partition of their own.
    """
    ascii_path = unicodedata.normalize("NFKD", relative_path).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_path.lower()).strip("-")[:_KEY_SLUG_CHARS].strip("-")
    hashed = f"twin:{relative_path}" if twin else relative_path
    digest = hashlib.sha1(hashed.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug or 'note'}-{digest}"


def key_of_note(relative_path: str, taken: Collection[str]) -> str:
    """The key `discover_notes` gives this file when the keys in `taken` belong to other files."""
    key = note_partition_key(relative_path)
    return note_partition_key(relative_path, twin=True) if key in taken else key


def is_ignored_note_file(name: str) -> bool:
    """Hidden, lock, swap and backup files are editor debris, never notes."""
    return name.startswith((".", "~$")) or name.lower().endswith(_IGNORED_SUFFIXES)


def discover_notes(notes_dir: Path) -> dict[str, Path]:
    """Every supported note under the folder, in a deterministic order, keyed by partition key."""
    if not notes_dir.exists():
        raise FileNotFoundError(f"notes folder not found: {notes_dir}")
    if not notes_dir.is_dir():
        raise NotADirectoryError(f"notes folder is not a folder: {notes_dir}")
    root = notes_dir.absolute()
    notes: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_ignored_note_file(name) or path.suffix.lower() not in NOTE_FORMATS:
                continue
            notes[key_of_note(path.relative_to(root).as_posix(), notes)] = path
    return notes


def find_note(notes_dir: Path, note_id: str, hint: str | None = None) -> Path:
    """The file behind a partition key; partitions outlive files, so a miss says so plainly.

    `hint` (the relative path the sensor tagged the run with) is taken when it still names this key's file:
    walking the whole folder for every note run grows with the folder (0.7 s a run at 10,000 notes)."""
    if hint and note_partition_key(hint) == note_id and (notes_dir / hint).is_file():
        return notes_dir / hint
    path = discover_notes(notes_dir).get(note_id)
    if path is None:
        raise FileNotFoundError(
            f"no note file for partition key '{note_id}' in {notes_dir} (was it deleted or renamed?)"
        )
    return path


def parse_note(path: Path, notes_dir: Path) -> ParsedNote:
    """The note's text, title and metadata, from a single read of its bytes."""
    relative = path.absolute().relative_to(notes_dir.absolute()).as_posix()
    note_format = NOTE_FORMATS.get(path.suffix.lower())
    if note_format is None:
        supported = ", ".join(NOTE_FORMATS)
        raise NoteParseError(relative, f"unsupported file type '{path.suffix}' (supported: {supported})")
    data = _read_inside(path, notes_dir, relative)
    extraction = _EXTRACTORS[note_format](data, relative)
    text = _LEADING_BLANK_LINES.sub("", extraction.text).rstrip()
    if not text:
        raise NoteParseError(relative, "empty note (no text after parsing)")
    if len(text) > MAX_NOTE_CHARS:
        reason = (
            f"too long: {len(text):,} characters after parsing, the limit for one note is {MAX_NOTE_CHARS:,} "
            "(split it into smaller notes)"
        )
        raise NoteParseError(relative, reason)
    title = extraction.title
    if title is None and note_format in ("text", "pdf"):
        title = _first_line_title(text)
    return ParsedNote(
        note_id=note_partition_key(relative),
        path=relative,
        title=title or _title_from_stem(path),
        format=note_format,
        text=text,
        metadata=extraction.metadata,
        sha256=hashlib.sha256(data).hexdigest(),
        encoding=extraction.encoding,
    )


def link_target_outside(path: Path, notes_dir: Path) -> Path | None:
    """Where `path` really leads when that is outside the notes folder, else None.

    A link may point elsewhere inside the folder, never outside it: the folder is what the author
    chose to train on. The sensor and the parser both ask here, so they never disagree.
    """
    real = Path(os.path.realpath(path))
    return None if real.is_relative_to(os.path.realpath(notes_dir)) else real


def _read_inside(path: Path, notes_dir: Path, relative: str) -> bytes:
    """The file's bytes, if it is a readable regular file of sane size that lives in the notes folder."""
    try:
        outside = link_target_outside(path, notes_dir)
        if outside is not None:
            raise NoteParseError(relative, f"is a link to a file outside the notes folder ({outside}); not read")
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # reading a pipe would wait for a writer forever
            raise NoteParseError(relative, "is not a regular file (a pipe, socket or device); not read")
        size = info.st_size
        if size > MAX_NOTE_BYTES:
            limit = MAX_NOTE_BYTES // (1024 * 1024)
            raise NoteParseError(relative, f"too large: {size / 1024**2:,.0f} MiB, the limit is {limit} MiB; not read")
        return path.read_bytes()
    except OSError as error:
        raise NoteParseError(relative, f"cannot be read: {error.strerror or _describe(error)}") from error


def _describe(error: Exception) -> str:
    """Library messages on one line; some libraries raise with no message at all."""
    return " ".join(str(error).split()) or type(error).__name__


def _title_from_stem(path: Path) -> str:
    """'chain-wear' -> 'Chain wear': the last resort when the note names itself nowhere."""
    words = " ".join(re.sub(r"[-_]+", " ", path.stem).split()) or path.name
    return words[:1].upper() + words[1:]


def _first_line_title(text: str) -> str | None:
    first = text.split("\n", 1)[0].strip()
    return first if len(first) <= _TITLE_MAX_CHARS else None


def _jsonable(value: Any) -> Any:
    """Metadata goes into JSON columns and Dagster metadata, so YAML/document types are converted."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _decode(data: bytes, relative: str) -> tuple[str, str]:
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
            reason = f"has a byte-order mark but is not valid {encoding}: {_describe(error)}"
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


def _first_atx_heading(text: str) -> str | None:
    """The first '# ' heading outside fenced code, where '#' starts shell comments instead."""
    in_fence = False
    for line in text.split("\n"):
        if _CODE_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _ATX_HEADING.fullmatch(line)):
            return match.group(1)
    return None


def _extract_markdown(data: bytes, relative: str) -> _Extraction:
    text, encoding = _decode(data, relative)
    metadata: dict[str, Any] = {}
    front = _FRONT_MATTER.match(text)
    if front:
        try:
            loaded = yaml.safe_load(front.group(1))
        except yaml.YAMLError as error:
            raise NoteParseError(relative, f"invalid YAML front matter: {_describe(error)}") from error
        # Anything but a mapping is prose between two '---' rules, not front matter: keep it.
        if loaded is None or isinstance(loaded, dict):
            metadata = _jsonable(loaded or {})
            text = text[front.end() :]
    title = " ".join(str(metadata.get("title") or "").split()) or _first_atx_heading(text)
    return _Extraction(text, metadata, title, encoding)


def _extract_text(data: bytes, relative: str) -> _Extraction:
    text, encoding = _decode(data, relative)
    return _Extraction(text, {}, encoding=encoding)


def _extract_pdf(data: bytes, relative: str) -> _Extraction:
    # pypdf raises many exception types (its own, ValueError, KeyError, ...) on malformed files.
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise NoteParseError(relative, "PDF is encrypted and needs a password; save an unlocked copy")
        pages = [_pdf_page_lines(page) for page in reader.pages]
        info = reader.metadata
    except NoteParseError:
        raise
    except DependencyError as error:
        reason = f"PDF is encrypted and cannot be decrypted here: {_describe(error)}"
        raise NoteParseError(relative, reason) from error
    except Exception as error:
        raise NoteParseError(relative, f"cannot be parsed as PDF: {_describe(error)}") from error
    if not any(line.text for lines in pages for line in lines):
        raise NoteParseError(relative, "no extractable text (scanned image?)")
    metadata: dict[str, Any] = {"pages": len(pages)}
    for field in ("title", "author"):
        value = " ".join(str(getattr(info, field, None) or "").split()) if info else ""
        if value:
            metadata[field] = value
    return _Extraction(_reflow_pdf_pages(pages), metadata, metadata.get("title"))


@dataclass
class _PdfLine:
    text: str
    baseline: float | None  # vertical position on the page, None when pypdf gave no position


def _pdf_page_lines(page: PageObject) -> list[_PdfLine]:
    """The page's visual lines with their heights, collected from pypdf's text visitor."""
    lines = [_PdfLine("", None)]

    def visit(text: str, cm: list[float], tm: list[float], font: Any, size: float) -> None:
        for index, part in enumerate(text.split("\n")):
            if index:
                lines.append(_PdfLine("", None))
            if part.strip() and lines[-1].baseline is None:
                lines[-1].baseline = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            lines[-1].text += part

    page.extract_text(visitor_text=visit)
    for line in lines:
        line.text = " ".join(line.text.split())
    return lines


def _reflow_pdf_pages(pages: list[list[_PdfLine]]) -> str:
    """PDF text comes one visual line per line; rebuild paragraphs separated by blank lines.

    A line ends a paragraph when the next line is blank or sits noticeably lower than the usual
    line spacing, when it ends a sentence and the next line's first word would still have fitted
    on it, or when it is so short that the break must be the author's (headings, list items).
    Other lines were wrapped by the layout and are joined with a space. Page breaks end paragraphs.
    """
    lengths = sorted(len(line.text) for lines in pages for line in lines if line.text)
    typical_chars = max(lengths[int(0.9 * (len(lengths) - 1))], _MIN_TYPICAL_LINE_CHARS)
    spacings = sorted(
        upper.baseline - lower.baseline
        for lines in pages
        for upper, lower in zip(lines, lines[1:])
        if upper.baseline is not None and lower.baseline is not None and upper.baseline > lower.baseline
    )
    # A low percentile: in notes of short paragraphs, paragraph gaps can outnumber line gaps.
    typical_spacing = spacings[len(spacings) // 4] if spacings else None
    paragraphs: list[str] = []
    for lines in pages:
        current: list[str] = []
        for line, following in zip(lines, lines[1:] + [_PdfLine("", None)]):
            if line.text:
                current.append(line.text)
            if current and (
                not line.text or not following.text or _ends_paragraph(line, following, typical_chars, typical_spacing)
            ):
                paragraphs.append(_join_wrapped_lines(current))
                current = []
    return "\n\n".join(paragraphs)


def _ends_paragraph(line: _PdfLine, following: _PdfLine, typical_chars: int, typical_spacing: float | None) -> bool:
    """Geometry first (a paragraph gap); else whether the layout could have wrapped here."""
    if typical_spacing and line.baseline is not None and following.baseline is not None:
        if line.baseline - following.baseline > typical_spacing * _PARAGRAPH_SPACING_SHARE:
            return True
    with_next_word = len(line.text) + 1 + len(following.text.split()[0])
    if _SENTENCE_END.search(line.text) and with_next_word <= typical_chars * _SENTENCE_END_LINE_SHARE:
        return True
    return with_next_word <= typical_chars * _EARLY_BREAK_LINE_SHARE


def _join_wrapped_lines(lines: list[str]) -> str:
    """Join layout-wrapped lines, undoing 'exam-' + 'ple' hyphenation when the word continues."""
    joined = lines[0]
    for line in lines[1:]:
        if _HYPHENATED.search(joined):
            joined = joined[:-1] + line if line[:1].islower() else joined + line
        else:
            joined = f"{joined} {line}"
    return joined


def _extract_docx(data: bytes, relative: str) -> _Extraction:
    if not data:
        raise NoteParseError(relative, "cannot be parsed as DOCX: the file is empty (0 bytes)")
    # python-docx surfaces zipfile, lxml and KeyError failures on damaged files.
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(document))
        properties = document.core_properties
        metadata = {
            field: _jsonable(value) for field in ("title", "author", "created") if (value := getattr(properties, field))
        }
    except Exception as error:
        raise NoteParseError(relative, f"cannot be parsed as DOCX: {_describe(error)}") from error
    headings = [text for level, text in blocks if level]
    title = str(metadata.get("title") or "").strip() or (headings[0] if headings else None)
    text = "\n\n".join("#" * level + " " + text if level else text for level, text in blocks)
    return _Extraction(text, metadata, title)


def _docx_blocks(container: Any) -> Iterator[tuple[int, str]]:
    """(heading level or 0, text) in document order; table cells become their own paragraphs."""
    for item in container.iter_inner_content():
        if isinstance(item, Paragraph):
            text = item.text.strip()
            if text:
                level = _docx_heading_level(item)
                yield level, " ".join(text.split()) if level else text
        elif isinstance(item, Table):
            seen: set[Any] = set()
            for row in item.rows:
                for cell in row.cells:
                    if cell._tc not in seen:  # a merged cell is repeated once per grid column
                        seen.add(cell._tc)
                        yield from _docx_blocks(cell)


def _docx_heading_level(paragraph: Paragraph) -> int:
    """Markdown heading depth for Word's built-in 'Title' and 'Heading N' styles, else 0."""
    style = paragraph.style.name if paragraph.style is not None else None
    if style == "Title":
        return 1
    heading = _DOCX_HEADING_STYLE.fullmatch(style or "")
    return min(int(heading.group(1)), 6) if heading else 0


_EXTRACTORS: dict[str, Callable[[bytes, str], _Extraction]] = {
    "markdown": _extract_markdown,
    "text": _extract_text,
    "pdf": _extract_pdf,
    "docx": _extract_docx,
}
