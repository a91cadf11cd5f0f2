"""E-books (`.epub`), chapter by chapter in reading order, by `ebooklib`.

Each chapter's text comes through the same main-text extraction as a web page, so its headings stay Markdown
headings and chunking can open passages at them. A DRM-protected book cannot be read, and says so.
"""

from __future__ import annotations

import io
import warnings
import xml.etree.ElementTree as ElementTree
import zipfile
from typing import Any

import ebooklib
from ebooklib import epub

from fine_tune_dag.core.ingest.base import Extraction, NoteParseError, SourceFile, describe
from fine_tune_dag.core.ingest.web import main_text

_ENCRYPTION = "META-INF/encryption.xml"
# font obfuscation, which many DRM-free books use for embedded fonts: the text is readable
_FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}


def _encrypted_content(archive: zipfile.ZipFile) -> bool:
    """Whether encryption.xml encrypts more than fonts (Adobe ADEPT, Apple FairPlay, … DRM)."""
    if _ENCRYPTION not in archive.namelist():
        return False
    try:
        root = ElementTree.fromstring(archive.read(_ENCRYPTION))
    except ElementTree.ParseError:
        return True  # an encryption manifest that cannot be read: assume the worst, the reason says why
    methods = {node.get("Algorithm", "") for node in root.iter() if node.tag.endswith("EncryptionMethod")}
    return bool(methods - _FONT_OBFUSCATION)


def _first(book: epub.EpubBook, name: str) -> str | None:
    values = book.get_metadata("DC", name)
    return (" ".join(str(values[0][0]).split()) or None) if values else None


def read_epub(source: SourceFile) -> Extraction:
    if not source.data:
        raise NoteParseError(source.relative, "cannot be parsed as EPUB: the file is empty (0 bytes)")
    buffer = io.BytesIO(source.data)
    if not zipfile.is_zipfile(buffer):
        raise NoteParseError(source.relative, "not an EPUB: the file is not a zip archive")
    try:
        with zipfile.ZipFile(buffer) as archive:
            if _encrypted_content(archive):
                raise NoteParseError(
                    source.relative,
                    f"DRM-protected e-book ({_ENCRYPTION} encrypts its content): export a DRM-free copy",
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ebooklib warns about its own future defaults on every read
            book = epub.read_epub(io.BytesIO(source.data), options={"ignore_ncx": True})
        chapters = []
        for idref, _ in book.spine:
            item = book.get_item_with_id(idref)
            if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT and item.is_chapter():
                text = main_text(item.get_content(), recall=True)
                if text and text.strip():
                    chapters.append(text.strip())
    except NoteParseError:
        raise
    except Exception as error:  # zipfile, lxml and ebooklib raise many types on damaged books
        raise NoteParseError(source.relative, f"cannot be parsed as EPUB: {describe(error)}") from error
    if not chapters:
        raise NoteParseError(source.relative, "the e-book has no chapters with text")
    metadata: dict[str, Any] = {"chapters": len(chapters)}
    for field, name in (("title", "title"), ("author", "creator"), ("language", "language")):
        if value := _first(book, name):
            metadata[field] = value
    return Extraction("\n\n".join(chapters), metadata, metadata.get("title"), source_kind="ebook")
