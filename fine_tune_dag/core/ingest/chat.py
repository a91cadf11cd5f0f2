"""Chat exports: Telegram Desktop's `result.json` and WhatsApp's `.txt` export.

Only the author's own messages are text (their name in the export is `SourceSettings.author_names`). Messages
are grouped into conversations wherever the chat fell silent for longer than `conversation_gap_minutes`; each
conversation with something of the author's in it is a `## <date time>` section of the note. What the other
side said is never text: the lines each of the author's messages answered are kept beside it as context
(`Extraction.context`, with the message's span in the text), for questions grounded in a real exchange.
Photos, stickers, voice notes and other media are counted, never read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fine_tune_dag.core.ingest.base import (
    Extraction,
    NoteParseError,
    SourceFile,
    SourceSettings,
    decode_text,
    describe,
    sectioned_text,
)

# Android: "11/03/2024, 09:14 - Name: text"; iOS: "[11/03/2024, 09:14:05] Name: text"; any of . / - between
# date parts, 12- or 24-hour clocks; newer exports put a narrow no-break space before AM/PM and a
# left-to-right mark before attachments.
_WHATSAPP_LINE = re.compile(
    r"^\u200e?\[?(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4}),?\s(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)"
    r"(?:\s?(?P<half>[AaPp])\.?\s?[Mm]\.?)?\]?(?:\s[-–]|:)?\s(?P<rest>.*)$"
)
_WHATSAPP_SENDER = re.compile(r"(?P<sender>[^:]{1,80}?):\s(?P<text>.*)", re.DOTALL)
_WHATSAPP_NAME = re.compile(r"^(?:_chat|whatsapp chat\b.*)\.txt$", re.IGNORECASE)
_MEDIA = re.compile(
    r"^\u200e?(?:<media omitted>|<attached: .*>|(?:image|video|audio|sticker|gif|document|contact card) omitted"
    r"|this message was deleted|you deleted this message)$",
    re.IGNORECASE,
)
_SNIFFED_LINES = 5
_TELEGRAM_LAYOUT = (
    "not a Telegram export in a layout this reader knows: expected Telegram Desktop's JSON export "
    "(a chat with a 'messages' list, or a full export with chats.list)"
)


@dataclass(frozen=True)
class ChatMessage:
    sender: str
    sent: datetime
    text: str


def _no_author_reason(settings: SourceSettings, messages: int) -> str:
    if not settings.author_names:
        return (
            "no author names are set, so no message can be told to be yours: set FINE_TUNE_DAG_AUTHOR_NAMES to "
            "your name as the export shows it"
        )
    return (
        f"none of its {messages} message(s) is from the author ({len(settings.author_names)} name(s) set in "
        "FINE_TUNE_DAG_AUTHOR_NAMES)"
    )


def conversations(messages: list[ChatMessage], gap: timedelta) -> list[list[ChatMessage]]:
    """Consecutive messages, split wherever nobody wrote for longer than `gap`."""
    groups: list[list[ChatMessage]] = []
    for message in messages:
        if not groups or message.sent - groups[-1][-1].sent > gap:
            groups.append([])
        groups[-1].append(message)
    return groups


def chat_extraction(messages: list[ChatMessage], media: int, source: SourceFile, title: str | None) -> Extraction:
    """The author's messages by conversation, and the other side's lines before each as its context."""
    settings = source.settings
    if not any(settings.is_author_name(m.sender) for m in messages):
        raise NoteParseError(source.relative, _no_author_reason(settings, len(messages)))
    sections: list[tuple[str, list[str]]] = []
    answered: list[list[list[str]]] = []  # per section, per paragraph: the other side's lines it followed
    for conversation in conversations(messages, timedelta(minutes=settings.conversation_gap_minutes)):
        paragraphs, before, heard = [], [], []
        for message in conversation:
            if settings.is_author_name(message.sender):
                paragraphs.append(message.text)
                before.append(heard)
                heard = []
            else:
                heard.append(message.text)
        if paragraphs:
            sections.append((f"{conversation[0].sent:%Y-%m-%d %H:%M}", paragraphs))
            answered.append(before)
    text, spans = sectioned_text(sections)
    context = tuple(
        {"start": start, "end": end, "replying_to": lines}
        for section_spans, section_lines in zip(spans, answered)
        for (start, end), lines in zip(section_spans, section_lines)
        if lines
    )
    own = sum(len(paragraphs) for _, paragraphs in sections)
    metadata = {
        "messages": len(messages) + media,
        "by_author": own,
        "conversations": len(sections),
        "media_ignored": media,
        "other_lines_as_context": sum(len(c["replying_to"]) for c in context),
    }
    return Extraction(text, metadata, title, source_kind="chat", context=context, collection=True)


# --- Telegram -----------------------------------------------------------------------------------------------


def _telegram_text(value: Any) -> str:
    """Telegram keeps formatted text as a list of strings and entities ({"type": "bold", "text": …})."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in value)
    raise TypeError(f"'text' is a {type(value).__name__}")


def _telegram_chats(export: Any) -> list[dict[str, Any]]:
    if isinstance(export, dict) and isinstance(export.get("messages"), list):
        return [export]
    chats = export.get("chats") if isinstance(export, dict) else None
    listed = chats.get("list") if isinstance(chats, dict) else None
    if isinstance(listed, list) and all(isinstance(c, dict) and isinstance(c.get("messages"), list) for c in listed):
        return listed
    raise ValueError(_TELEGRAM_LAYOUT)


def read_telegram(source: SourceFile) -> Extraction:
    try:
        export = json.loads(source.data)
    except (ValueError, UnicodeDecodeError) as error:
        raise NoteParseError(source.relative, f"invalid JSON: {describe(error)}") from error
    try:
        chats = _telegram_chats(export)
        messages, media = [], 0
        for chat in chats:
            for entry in chat["messages"]:
                if entry.get("type") != "message":  # service entries: joined, pinned, called
                    continue
                text = _telegram_text(entry.get("text", "")).strip()
                if not text:
                    media += 1
                    continue
                sent = datetime.fromisoformat(entry["date"])
                messages.append(ChatMessage(str(entry.get("from") or ""), sent, text))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        detail = f"a message has no {error}" if isinstance(error, KeyError) else describe(error)
        reason = str(error) if str(error) == _TELEGRAM_LAYOUT else f"{_TELEGRAM_LAYOUT}; {detail}"
        raise NoteParseError(source.relative, reason) from error
    if not messages:
        raise NoteParseError(source.relative, "the Telegram export holds no text messages")
    title = (str(chats[0].get("name") or "") or None) if len(chats) == 1 else "Telegram chats"
    return chat_extraction(messages, media, source, title)


# --- WhatsApp -----------------------------------------------------------------------------------------------


def is_whatsapp_export(name: str, text: str) -> bool:
    """WhatsApp's own file names, or a text file that opens with WhatsApp message lines (the first may be
    WhatsApp's own notice, without a sender)."""
    if _WHATSAPP_NAME.match(name):
        return True
    opening = [line for line in text.split("\n", _SNIFFED_LINES)[:_SNIFFED_LINES] if line.strip()]
    matches = [_WHATSAPP_LINE.match(line) for line in opening]
    return bool(matches and matches[0]) and any(m and _WHATSAPP_SENDER.fullmatch(m.group("rest")) for m in matches)


def _date_order(dates: Iterable[tuple[int, int, int]]) -> str:
    """'ymd', 'dmy' or 'mdy': a first part above 12 is a day, a second above 12 is a day; else day first."""
    dates = list(dates)
    if any(a > 31 for a, _, _ in dates):
        return "ymd"
    if any(b > 12 for _, b, _ in dates) and not any(a > 12 for a, _, _ in dates):
        return "mdy"
    return "dmy"


def _timestamp(parts: tuple[int, int, int], order: str, clock: str, half: str | None) -> datetime:
    a, b, c = parts
    year, month, day = (a, b, c) if order == "ymd" else (c, b, a) if order == "dmy" else (c, a, b)
    year += 2000 if year < 100 else 0
    hour, minute, *second = (int(p) for p in re.split(r"[:.]", clock))
    if half:
        hour = hour % 12 + (12 if half.lower() == "p" else 0)
    return datetime(year, month, day, hour, minute, second[0] if second else 0)


def read_whatsapp(source: SourceFile, text: str | None = None) -> Extraction:
    """`text`: the file already decoded (the text reader found it is a WhatsApp export)."""
    if text is None:
        text, _ = decode_text(source.data, source.relative)
    lines: list[tuple[re.Match[str], list[str]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        match = _WHATSAPP_LINE.match(line)
        if match:
            lines.append((match, [match.group("rest")]))
        elif lines:
            lines[-1][1].append(line)  # a message over several lines
        elif line.strip():
            raise NoteParseError(
                source.relative,
                f"not a WhatsApp export this reader knows: line {number} does not start with a date and time in a "
                "format it reads (day, month and year in digits, then the time: '11/03/2024, 09:14 - Name: …' "
                "or '[11/03/2024, 09:14:05] Name: …')",
            )
    if not lines:
        raise NoteParseError(source.relative, "the WhatsApp export is empty")
    parts = [tuple(int(p) for p in re.split(r"[./-]", m.group("date"))) for m, _ in lines]
    order = _date_order(parts)  # type: ignore[arg-type]
    messages, media = [], 0
    for number, ((match, body), date_parts) in enumerate(zip(lines, parts), start=1):
        said = _WHATSAPP_SENDER.fullmatch("\n".join(body).strip())
        if said is None:  # "Messages and calls are end-to-end encrypted", "X added Y": WhatsApp's own lines
            continue
        if _MEDIA.match(said.group("text").strip()):
            media += 1
            continue
        try:
            sent = _timestamp(date_parts, order, match.group("time"), match.group("half"))  # type: ignore[arg-type]
        except ValueError as error:
            reason = (
                f"message {number} has a date that is not a calendar date ({match.group('date')}): {describe(error)}"
            )
            raise NoteParseError(source.relative, reason) from error
        messages.append(
            ChatMessage(said.group("sender").strip().lstrip("\u200e~\u202f "), sent, said.group("text").strip())
        )
    if not messages:
        raise NoteParseError(source.relative, "the WhatsApp export holds no text messages")
    return chat_extraction(messages, media, source, None)
