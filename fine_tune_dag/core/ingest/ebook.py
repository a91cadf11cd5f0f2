"""E-books (`.epub`), chapter by chapter in reading order, by `ebooklib`.

A chapter is clean XHTML with nothing to strip, and main-text extractors take its opening heading for a page
title and drop it, so its blocks are read in order with `lxml` (which ebooklib parses with): headings become
Markdown headings (`# `, `## `) and chunking can open passages at them. A DRM-protected book cannot be read,
and says so.
"""

from __future__ import annotations

import io
import warnings
import xml.etree.ElementTree as ElementTree
import zipfile
from typing import Any

import ebooklib
import lxml.html
from ebooklib import epub

from fine_tune_dag.core.ingest.base import Extraction, NoteParseError, SourceFile, describe

_ENCRYPTION = "META-INF/encryption.xml"
_ZIP_MAGIC = b"PK\x03\x04"
# font obfuscation, which many DRM-free books use for embedded fonts: the text is readable
_FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = {*_HEADINGS, "p", "li", "pre", "dt", "dd", "blockquote", "div"}


def chapter_text(content: bytes) -> str:
    """The chapter's blocks in reading order, one paragraph each; headings as Markdown headings.

    A block inside another block (a paragraph in a list item or a quotation) is read with its outer block,
    except that containers holding blocks of their own (a div of paragraphs) give way to them."""
    body = lxml.html.document_fromstring(content).body
    paragraphs = []
    for element in body.iter(*_BLOCKS):
        inner = any(child.tag in _BLOCKS for child in element.iterdescendants())
        outer = any(parent.tag in _BLOCKS - {"div", "blockquote"} for parent in element.iterancestors())
        if (inner and element.tag in ("div", "blockquote")) or outer:
            continue
        text = element.text_content().strip("\n") if element.tag == "pre" else " ".join(element.text_content().split())
        if text:
            level = _HEADINGS.get(element.tag, 0)
            paragraphs.append(f"{'#' * level} {text}" if level else text)
    return "\n\n".join(paragraphs)


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
    if not source.data.startswith(_ZIP_MAGIC):
        raise NoteParseError(source.relative, "not an EPUB: the file is not a zip archive")
    try:
        with zipfile.ZipFile(io.BytesIO(source.data)) as archive:
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
                text = chapter_text(item.get_content())
                if text:
                    chapters.append(text)
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
