"""Mailboxes (`.mbox`) and single messages (`.eml`): the messages the author sent, as their text.

Only messages from one of the author's addresses count. Of each, only what the author wrote this time: the
quoted message it answers and the signature are cut by `mail-parser-reply`, and quoted lines left inline are
dropped. No header is text; the subject is a message's title (the note's, for an `.eml` file, its section's
heading in a mailbox). Attachments are never read, only counted. A mailbox stays one note (one partition): at
the project's measured cost of a run (seconds of start-up, a 191 KiB event log), a partition per message would
spend more on runs than on the messages.
"""

from __future__ import annotations

import email.policy
import mailbox
import re
from collections import Counter
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import BinaryIO

from mailparser_reply.parser import EmailMessage as ReplyText

from fine_tune_dag.core.ingest.base import (
    Extraction,
    NoteParseError,
    SourceFile,
    SourceSettings,
    describe,
    sectioned_text,
)
from fine_tune_dag.core.ingest.web import main_text

_REPLY_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "sv"]
_QUOTED_LINE = re.compile(r"^[ \t]*>.*(?:\n|\Z)", re.MULTILINE)
_REPLY_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|aw|wg|sv|tr)\s*:\s*)+", re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n{3,}")
# a multipart message cut off before its closing boundary, or a header cut off before the body: a truncated file
_TRUNCATION_DEFECTS = ("CloseBoundaryNotFoundDefect", "StartBoundaryNotFoundDefect", "MissingHeaderBodySeparatorDefect")
NO_SUBJECT = "(no subject)"


def _message(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def _headers(handle: BinaryIO) -> Message:
    """Only the headers, in the legacy policy: enough to tell who sent a message, at a fraction of the cost of
    parsing it whole (most of a mailbox is other people's)."""
    return BytesHeaderParser().parse(handle)


def _sender_is_author(message: Message, settings: SourceSettings) -> bool:
    return any(settings.is_author_address(address) for _, address in getaddresses([str(message.get("From", ""))]))


def subject_of(message: Message) -> str:
    """The subject without 'Re:'/'Fwd:' prefixes, on one line."""
    return " ".join(_REPLY_PREFIX.sub("", str(message.get("Subject", ""))).split())


def _body(message: EmailMessage) -> str | None:
    """The message's own text part (plain preferred, else the main text of its HTML), or None if it has none."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, UnicodeDecodeError):  # an unknown or wrong charset: keep what decodes
        content = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    if part.get_content_subtype() == "html":
        return main_text(content, recall=True)
    return content


def authored_text(body: str) -> str:
    """What the author wrote in this message: no quoted reply, no signature, no quoted lines."""
    latest = ReplyText(text=body, languages=list(_REPLY_LANGUAGES), keep_hyphen_lists=True).read().replies[0]
    return _BLANK_RUNS.sub("\n\n", _QUOTED_LINE.sub("", latest.body)).strip()


def _attachments(message: EmailMessage) -> int:
    return sum(1 for _ in message.iter_attachments()) if message.is_multipart() else 0


def _no_author_reason(settings: SourceSettings, messages: int) -> str:
    if not settings.author_addresses:
        return (
            "no author addresses are set, so no message can be told to be yours: set FINE_TUNE_DAG_AUTHOR_ADDRESSES "
            "to the addresses you write from"
        )
    return (
        f"none of its {messages} message(s) was sent from the author's addresses "
        f"({len(settings.author_addresses)} set in FINE_TUNE_DAG_AUTHOR_ADDRESSES)"
    )


def read_eml(source: SourceFile) -> Extraction:
    """One message file: its author's text, titled by its subject."""
    if not source.data.strip():
        raise NoteParseError(source.relative, "cannot be parsed as an e-mail message: the file is empty")
    message = _message(source.data)
    if not message.keys():
        raise NoteParseError(source.relative, "cannot be parsed as an e-mail message: it has no headers")
    if not _sender_is_author(message, source.settings):
        raise NoteParseError(source.relative, _no_author_reason(source.settings, 1))
    body = _body(message)
    if body is None:
        raise NoteParseError(source.relative, "the message has no text part (only attachments or other content)")
    text = authored_text(body)
    if not text:
        raise NoteParseError(source.relative, "the message has no text of its own (only quotes and a signature)")
    metadata = {"messages": 1, "by_author": 1, "attachments_ignored": _attachments(message)}
    return Extraction(text, metadata, subject_of(message) or None, source_kind="mail")


def _refuse_truncated(last: EmailMessage | None, messages: int, relative: str) -> None:
    """A file cut off mid-message shows in its last message: a multipart never closed, or headers with no body."""
    cut = [
        type(d).__name__ for d in (last.defects if last is not None else []) if type(d).__name__ in _TRUNCATION_DEFECTS
    ]
    if last is None or cut or not last.keys():
        reason = ", ".join(cut) or "no headers"
        raise NoteParseError(relative, f"truncated mailbox: its last message (of {messages}) is cut short ({reason})")


def read_mbox(source: SourceFile) -> Extraction:
    """Every message the author sent, in mailbox order, each a '## subject' section; the rest counted.

    `mailbox.mbox` opens the file itself (its bytes were read already for the hash); it never writes to it:
    nothing is added, removed or locked.
    """
    if not source.data.startswith(b"From "):
        what = "the file is empty" if not source.data.strip() else "it does not start with a 'From ' line"
        raise NoteParseError(source.relative, f"not an mbox mailbox: {what}")
    try:
        box = mailbox.mbox(source.path, factory=_headers, create=False)
        keys = box.keys()
        _refuse_truncated(_message(box.get_bytes(keys[-1])) if keys else None, len(keys), source.relative)
        skipped: Counter[str] = Counter()
        sections: list[tuple[str, list[str]]] = []
        seen_ids: set[str] = set()
        authored = attachments = 0
        for key in keys:  # one message parsed whole at a time: a mailbox of any size takes its text's memory
            headers = box[key]
            message_id = str(headers.get("Message-ID", "")).strip()
            if not _sender_is_author(headers, source.settings):
                skipped["from others"] += 1
                continue
            if message_id and message_id in seen_ids:
                skipped["repeated (same Message-ID)"] += 1
                continue
            seen_ids.add(message_id)
            message = _message(box.get_bytes(key))
            authored += 1
            attachments += _attachments(message)
            body = _body(message)
            text = authored_text(body) if body is not None else ""
            if body is None:
                skipped["no text part"] += 1
            elif not text:
                skipped["only quotes and a signature"] += 1
            else:
                sections.append((subject_of(message) or NO_SUBJECT, [text]))
        box.close()
    except (OSError, mailbox.Error) as error:
        raise NoteParseError(source.relative, f"cannot be read as an mbox mailbox: {describe(error)}") from error
    if not authored:
        raise NoteParseError(source.relative, _no_author_reason(source.settings, len(keys)))
    if not sections:
        reasons = ", ".join(f"{count} {why}" for why, count in sorted(skipped.items()) if why != "from others")
        raise NoteParseError(
            source.relative, f"none of the author's {authored} message(s) has text of its own ({reasons})"
        )
    metadata = {
        "messages": len(keys),
        "by_author": len(sections),
        "attachments_ignored": attachments,
        "skipped": dict(sorted(skipped.items())),
    }
    return Extraction(sectioned_text(sections)[0], metadata, None, source_kind="mail", collection=True)
