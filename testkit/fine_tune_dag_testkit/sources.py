"""Mailboxes and e-books built with the libraries that read them (stdlib `mailbox`/`email`, `ebooklib`)."""

from __future__ import annotations

import mailbox
import warnings
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Iterable

from ebooklib import epub

AUTHOR = "Ilona Varga"
AUTHOR_ADDRESS = "ilona@theslowwheel.example"


def mail(
    sender: str,
    subject: str,
    body: str,
    sent: datetime = datetime(2024, 3, 11, 8, 0, tzinfo=timezone.utc),
    message_id: str | None = None,
    attachment: tuple[str, str] | None = None,
) -> EmailMessage:
    """One plain-text message; `attachment` is (file name, text)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "someone@example.org"
    message["Subject"] = subject
    message["Date"] = format_datetime(sent)
    if message_id:
        message["Message-ID"] = message_id
    message.set_content(body)
    if attachment:
        message.add_attachment(attachment[1], filename=attachment[0])
    return message


def write_mbox(path: Path, messages: Iterable[EmailMessage]) -> Path:
    box = mailbox.mbox(path)
    for message in messages:
        box.add(message)
    box.close()
    return path


def write_epub(path: Path, title: str, chapters: list[tuple[str, str]], author: str = AUTHOR) -> Path:
    """`chapters`: (file stem, XHTML body) in reading order; a navigation document comes first, as usual."""
    book = epub.EpubBook()
    book.set_identifier(f"urn:fine-tune-dag:{path.stem}")
    book.set_title(title)
    book.set_language("en")
    book.add_author(author)
    items = []
    for stem, body in chapters:
        item = epub.EpubHtml(title=stem, file_name=f"{stem}.xhtml", lang="en")
        item.content = body
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epub.write_epub(str(path), book)
    return path
