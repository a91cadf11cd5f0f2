"""Note files (Markdown, text, PDF, DOCX, and through `core.ingest` mail, chat exports, web pages and
e-books) to plain text, one stable partition key per file.

Everything downstream cuts passages as exact spans of `ParsedNote.text`, so the text must be a
deterministic function of the file bytes. Notes are the author's own files: they are only read.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection, Iterator

import docx
import frontmatter
import tomllib
import yaml
from docx.table import Table
from docx.text.paragraph import Paragraph
from frontmatter.default_handlers import BaseHandler, JSONHandler, YAMLHandler
from pypdf import PageObject, PasswordType, PdfReader
from pypdf.errors import DependencyError

from fine_tune_dag.core.ingest.base import (
    Extraction,
    NoteParseError,
    Reader,
    SourceFile,
    SourceSettings,
    decode_text,
    describe,
    jsonable,
)
from fine_tune_dag.core.ingest.chat import is_whatsapp_export, read_telegram, read_whatsapp
from fine_tune_dag.core.ingest.ebook import read_epub
from fine_tune_dag.core.ingest.mail import read_eml, read_mbox
from fine_tune_dag.core.ingest.web import read_html

NOTE_FORMATS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",  # or a WhatsApp export, told by its name or its first line
    ".pdf": "pdf",
    ".docx": "docx",
    ".mbox": "mbox",
    ".eml": "email",
    ".json": "telegram",
    ".html": "html",
    ".htm": "html",
    ".epub": "epub",
}

_KEY_SLUG_CHARS = 48
# A note is one document, not a corpus: bigger files are refused with a reason instead of costing
# thousands of LLM calls (characters) or the worker's memory (bytes). A mailbox or chat export is a corpus the
# author chose to train on, so only the byte limit bounds it.
MAX_NOTE_BYTES = 256 * 1024 * 1024
MAX_NOTE_CHARS = 2_000_000
_TITLE_MAX_CHARS = 80
_IGNORED_SUFFIXES = (".swp", ".tmp", "~")
_ATX_HEADING = re.compile(r"#[ \t]+(\S.*?)(?:[ \t]+#+)?[ \t]*")
_CODE_FENCE = re.compile(r"[ ]{0,3}(?:```|~~~)")
_DOCX_HEADING_STYLE = re.compile(r"Heading ([1-9])")
_SENTENCE_END = re.compile(r"[.!?:;…][\"'”’)\]]*$")
_HYPHENATED = re.compile(r"[^\W\d_]-$")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# Reflow thresholds, as fractions of the typical (90th percentile) PDF line length in characters
# and of the typical (lower quartile) line spacing.
_SENTENCE_END_LINE_SHARE = 0.9
_EARLY_BREAK_LINE_SHARE = 0.6
_PARAGRAPH_SPACING_SHARE = 1.3
_MIN_TYPICAL_LINE_CHARS = 40


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
    source_kind: str = "note"  # note, mail, chat, web or ebook: what the training mix can weight
    context: tuple[dict[str, Any], ...] = ()  # other people's words beside the author's (`Extraction.context`)

    @property
    def char_count(self) -> int:
        return len(self.text)


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


def unsupported_reason(suffix: str) -> str:
    """Why a file of this type is not read, in the words `rejected` and the sensor list it with."""
    supported = ", ".join(NOTE_FORMATS)
    kind = f"unsupported file type '{suffix}'" if suffix else "unsupported file type (no extension)"
    return f"{kind} (supported: {supported})"


def survey_notes(notes_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Every supported note under the folder keyed by partition key, and every other file (relative path → why
    it is not read), in a deterministic order. Hidden folders and editor debris are neither."""
    if not notes_dir.exists():
        raise FileNotFoundError(f"notes folder not found: {notes_dir}")
    if not notes_dir.is_dir():
        raise NotADirectoryError(f"notes folder is not a folder: {notes_dir}")
    root = notes_dir.absolute()
    notes: dict[str, Path] = {}
    unsupported: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_ignored_note_file(name):
                continue
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() in NOTE_FORMATS:
                notes[key_of_note(relative, notes)] = path
            else:
                unsupported[relative] = unsupported_reason(path.suffix)
    return notes, unsupported


def discover_notes(notes_dir: Path) -> dict[str, Path]:
    """Every supported note under the folder, in a deterministic order, keyed by partition key."""
    return survey_notes(notes_dir)[0]


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


def parse_note(path: Path, notes_dir: Path, settings: SourceSettings | None = None) -> ParsedNote:
    """The note's text, title and metadata, from a single read of its bytes (a mailbox is read again by
    `mailbox`); `settings` say whose words are the author's in mail and chat exports."""
    relative = path.absolute().relative_to(notes_dir.absolute()).as_posix()
    note_format = NOTE_FORMATS.get(path.suffix.lower())
    if note_format is None:
        raise NoteParseError(relative, unsupported_reason(path.suffix))
    data = _read_inside(path, notes_dir, relative)
    extraction = _READERS[note_format](SourceFile(path, relative, data, settings or SourceSettings()))
    text = _LEADING_BLANK_LINES.sub("", extraction.text).rstrip()
    if not text:
        raise NoteParseError(relative, "empty note (no text after parsing)")
    if len(text) > MAX_NOTE_CHARS and not extraction.collection:
        reason = (
            f"too long: {len(text):,} characters after parsing, the limit for one note is {MAX_NOTE_CHARS:,} "
            "(split it into smaller notes)"
        )
        raise NoteParseError(relative, reason)
    note_format = extraction.format or note_format
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
        source_kind=extraction.source_kind,
        context=extraction.context,
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
        raise NoteParseError(relative, f"cannot be read: {error.strerror or describe(error)}") from error


def _title_from_stem(path: Path) -> str:
    """'chain-wear' -> 'Chain wear': the last resort when the note names itself nowhere."""
    words = " ".join(re.sub(r"[-_]+", " ", path.stem).split()) or path.name
    return words[:1].upper() + words[1:]


def _first_line_title(text: str) -> str | None:
    first = text.split("\n", 1)[0].strip()
    return first if len(first) <= _TITLE_MAX_CHARS else None


def _first_atx_heading(text: str) -> str | None:
    """The first '# ' heading outside fenced code, where '#' starts shell comments instead."""
    in_fence = False
    for line in text.split("\n"):
        if _CODE_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _ATX_HEADING.fullmatch(line)):
            return match.group(1)
    return None


class _TomlHandler(BaseHandler):
    """Hugo's TOML front matter between '+++' lines, read with the standard library (python-frontmatter's own
    TOML handler needs the unmaintained `toml` package)."""

    FM_BOUNDARY = re.compile(r"^\+{3,}\s*$", re.MULTILINE)

    def load(self, fm: str, **kwargs: object) -> Any:
        return tomllib.loads(fm)


# Obsidian and Jekyll write YAML ('---'), Hugo TOML ('+++') or YAML, some tools JSON ('{' … '}')
_FRONT_MATTER_HANDLERS = [YAMLHandler(), _TomlHandler(), JSONHandler()]
_TAG_SEPARATORS = re.compile(r"[,\s]+")


def _tags(value: Any) -> list[str]:
    """Tags as a list of words whatever the tool wrote: a list, 'a, b' (Obsidian) or 'a b' (Jekyll)."""
    items = value if isinstance(value, list) else _TAG_SEPARATORS.split(str(value or ""))
    return [tag for tag in (str(item).strip().lstrip("#") for item in items) if tag]


def _front_matter(text: str, relative: str) -> tuple[dict[str, Any], str]:
    """(metadata, the text after it), by python-frontmatter. Anything but a mapping between the fences is
    prose between two rules, not front matter: it stays text."""
    handler = frontmatter.detect_format(text, _FRONT_MATTER_HANDLERS)
    if handler is None:
        return {}, text
    try:
        raw, body = handler.split(text)
    except ValueError:  # one fence and no closing one: a rule, not front matter
        return {}, text
    try:
        loaded = handler.load(raw)
    except (yaml.YAMLError, ValueError) as error:
        kind = {YAMLHandler: "YAML", _TomlHandler: "TOML", JSONHandler: "JSON"}[type(handler)]
        raise NoteParseError(relative, f"invalid {kind} front matter: {describe(error)}") from error
    if loaded is not None and not isinstance(loaded, dict):
        return {}, text
    metadata = jsonable(loaded or {})
    if "tags" in metadata:
        metadata["tags"] = _tags(metadata["tags"])
    return metadata, body


def _extract_markdown(source: SourceFile) -> Extraction:
    text, encoding = decode_text(source.data, source.relative)
    metadata, text = _front_matter(text, source.relative)
    title = " ".join(str(metadata.get("title") or "").split()) or _first_atx_heading(text)
    return Extraction(text, metadata, title, encoding)


def _extract_text(source: SourceFile) -> Extraction:
    text, encoding = decode_text(source.data, source.relative)
    if is_whatsapp_export(source.path.name, text):
        return replace(read_whatsapp(source, text), encoding=encoding, format="whatsapp")
    return Extraction(text, {}, encoding=encoding)


def _extract_pdf(source: SourceFile) -> Extraction:
    data, relative = source.data, source.relative
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
        reason = f"PDF is encrypted and cannot be decrypted here: {describe(error)}"
        raise NoteParseError(relative, reason) from error
    except Exception as error:
        raise NoteParseError(relative, f"cannot be parsed as PDF: {describe(error)}") from error
    if not any(line.text for lines in pages for line in lines):
        raise NoteParseError(relative, "no extractable text (scanned image?)")
    metadata: dict[str, Any] = {"pages": len(pages)}
    for field in ("title", "author"):
        value = " ".join(str(getattr(info, field, None) or "").split()) if info else ""
        if value:
            metadata[field] = value
    return Extraction(_reflow_pdf_pages(pages), metadata, metadata.get("title"))


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


def _extract_docx(source: SourceFile) -> Extraction:
    data, relative = source.data, source.relative
    if not data:
        raise NoteParseError(relative, "cannot be parsed as DOCX: the file is empty (0 bytes)")
    # python-docx surfaces zipfile, lxml and KeyError failures on damaged files.
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(document))
        properties = document.core_properties
        metadata = {
            field: jsonable(value) for field in ("title", "author", "created") if (value := getattr(properties, field))
        }
    except Exception as error:
        raise NoteParseError(relative, f"cannot be parsed as DOCX: {describe(error)}") from error
    headings = [text for level, text in blocks if level]
    title = str(metadata.get("title") or "").strip() or (headings[0] if headings else None)
    text = "\n\n".join("#" * level + " " + text if level else text for level, text in blocks)
    return Extraction(text, metadata, title)


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


_READERS: dict[str, Reader] = {
    "markdown": _extract_markdown,
    "text": _extract_text,
    "pdf": _extract_pdf,
    "docx": _extract_docx,
    "mbox": read_mbox,
    "email": read_eml,
    "telegram": read_telegram,
    "html": read_html,
    "epub": read_epub,
}
