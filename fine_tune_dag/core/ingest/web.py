"""Saved web pages and blog exports (`.html`, `.htm`): the page's main text, by `trafilatura`.

Navigation, sidebars, footers and other boilerplate are dropped; the article's headings come back as Markdown
headings (`# `, `## `), so chunking can open passages at them.
"""

from __future__ import annotations

from typing import Any

import trafilatura
from trafilatura.settings import DEFAULT_CONFIG

from fine_tune_dag.core.ingest.base import Extraction, NoteParseError, SourceFile, decode_text, describe

# trafilatura's own limit on what it downloads: a page larger than this is not a page somebody wrote
MAX_PAGE_BYTES = DEFAULT_CONFIG.getint("DEFAULT", "MAX_FILE_SIZE")
_METADATA_FIELDS = ("author", "date", "sitename", "url")


def main_text(html: str | bytes, recall: bool = False) -> str | None:
    """The page's main text as Markdown, or None if there is none.

    Precision by default, without the fallback extractors (which return a page's menu when it has no
    article): a page of navigation only gives None. `recall` is for documents known to be content (an
    e-mail's HTML part), where short text still counts.
    """
    return trafilatura.extract(
        html,
        output_format="markdown",
        fast=not recall,
        favor_precision=not recall,
        favor_recall=recall,
        include_comments=False,
        include_images=False,
        include_links=False,
        deduplicate=False,
    )


def read_html(source: SourceFile) -> Extraction:
    if not source.data.strip():
        raise NoteParseError(source.relative, "cannot be parsed as a web page: the file is empty")
    if len(source.data) > MAX_PAGE_BYTES:
        reason = f"too large for a web page: {len(source.data):,} bytes, the limit is {MAX_PAGE_BYTES:,}"
        raise NoteParseError(source.relative, reason)
    html, encoding = decode_text(source.data, source.relative)
    try:
        text = main_text(html)
        found = trafilatura.extract_metadata(html)
    except Exception as error:  # lxml and trafilatura raise many types on damaged markup
        raise NoteParseError(source.relative, f"cannot be parsed as a web page: {describe(error)}") from error
    if not text or not text.strip():
        raise NoteParseError(source.relative, "no main text found in the page (only navigation and boilerplate?)")
    metadata: dict[str, Any] = {
        name: value for name in _METADATA_FIELDS if found is not None and (value := getattr(found, name, None))
    }
    title = found.title if found is not None and found.title else None
    return Extraction(text, metadata, title, encoding, source_kind="web")
