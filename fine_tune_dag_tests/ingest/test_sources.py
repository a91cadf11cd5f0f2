"""Mailboxes, chat exports, web pages and e-books: from file to the author's exact text, only the author's words,
bad files rejected on their own partition with the file and the reason, and files of a type not read listed
rather than skipped."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable

import dagster as dg
import pytest
from fine_tune_dag_testkit.scripted import scripted_definitions
from fine_tune_dag_testkit.sources import AUTHOR, AUTHOR_ADDRESS, mail, write_epub, write_mbox

from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.assets.tags import NOTE_PATH_TAG
from fine_tune_dag.cli import main
from fine_tune_dag.core.ingest import web
from fine_tune_dag.core.ingest.base import SourceSettings
from fine_tune_dag.core.ingest.notes import NoteParseError, ParsedNote, discover_notes, parse_note
from fine_tune_dag.core.store.notes import note_source_kinds
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.resources.sources import SourcesResource
from fine_tune_dag_tests.automation.test_sensor import Watcher, write
from fine_tune_dag_tests.ingest.test_ingest import parse_untouched

SAMPLE_NOTES = Path(__file__).resolve().parents[2] / "data" / "notes"
ME = f"{AUTHOR} <{AUTHOR_ADDRESS}>"
SETTINGS = SourceSettings.from_lists(f" {AUTHOR_ADDRESS.upper()}, old@theslowwheel.example", f"{AUTHOR}, Ilona")
WHEEL = "Here is the thing: the wheel is not bent, it is tired.\n\nPut the rye in the front and the rolls behind."
SWARM = "Please put me on the swarm list again this year."
QUOTED_REPLY = (
    f"Hanne,\n\n{WHEEL}\n\nThanks,\nIlona\n--\nThe Slow Wheel, 9 Ferry Lane\n\n"
    "On Sun, 10 Mar 2024 at 19:40, Hanne Berg <hanne@example.org> wrote:\n> The back wheel is wobbling.\n> Hanne\n"
)


def parse(path: Path, settings: SourceSettings = SETTINGS, notes_dir: Path | None = None) -> ParsedNote:
    """Parse with the author's settings, and prove the file was only read."""
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    try:
        return parse_note(path, notes_dir or path.parent, settings)
    finally:
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # read, never written


# --- mail -------------------------------------------------------------------------------------------------------


def test_a_mailbox_keeps_the_authors_own_words_per_message_and_counts_the_rest(tmp_path: Path) -> None:
    path = write_mbox(
        tmp_path / "sent.mbox",
        [
            mail(ME, "Re: The basket wheel", QUOTED_REPLY, message_id="<a@x>"),
            mail("Hanne Berg <hanne@example.org>", "Re: The basket wheel", "Thank you! A loaf for Moth."),
            mail(f"Ilona <{AUTHOR_ADDRESS}>", "Swarms", f"{SWARM}\n\n- a box\n- a sheet\n", attachment=("a.txt", "x")),
            mail(ME, "Re: The basket wheel", QUOTED_REPLY, message_id="<a@x>"),  # the same message, twice
            mail(ME, "", "Sent from the shop.\n\n> only a quote\n"),
        ],
    )
    note = parse(path)
    assert (
        note.text
        == f"## The basket wheel\n\nHanne,\n\n{WHEEL}\n\n## Swarms\n\n{SWARM}\n\n- a box\n- a sheet\n\n"
        + ("## (no subject)\n\nSent from the shop.")
    )
    assert "wobbling" not in note.text and "Ferry Lane" not in note.text and "Thanks" not in note.text
    assert "From:" not in note.text and "hanne@example.org" not in note.text and "Moth" not in note.text
    assert note.metadata == {
        "messages": 5,
        "by_author": 3,
        "attachments_ignored": 1,
        "skipped": {"from others": 1, "repeated (same Message-ID)": 1},
    }
    assert (note.format, note.source_kind, note.title) == ("mbox", "mail", "Sent")


def test_an_eml_message_is_its_own_text_titled_by_its_subject(tmp_path: Path) -> None:
    path = tmp_path / "basket.eml"
    path.write_bytes(bytes(mail(ME, "Re: Re: The basket wheel", QUOTED_REPLY, attachment=("photo.txt", "x"))))
    note = parse(path)
    assert note.text == f"Hanne,\n\n{WHEEL}"
    assert (note.title, note.format, note.source_kind) == ("The basket wheel", "email", "mail")
    assert note.metadata == {"messages": 1, "by_author": 1, "attachments_ignored": 1}


def test_an_html_only_message_gives_its_main_text(tmp_path: Path) -> None:
    message = mail(ME, "Swarms", "placeholder")
    message.set_content(
        f"<html><body><p>{SWARM} I can come any evening after half past five.</p></body></html>", subtype="html"
    )
    path = tmp_path / "html.eml"
    path.write_bytes(bytes(message))
    assert parse(path).text == f"{SWARM} I can come any evening after half past five."


def truncated_mbox(tmp: Path) -> bytes:
    whole = bytes(mail(ME, "Swarms", SWARM, attachment=("notes.txt", "yew, shelter, plum tree")))
    return b"From ilona@theslowwheel.example Mon Mar 11 08:00:00 2024\n" + whole[: len(whole) - 60]


def attachment_only(tmp: Path) -> bytes:
    message = mail(ME, "Photos", "x")
    message.clear_content()
    message.set_content(b"\x89PNG....", maintype="image", subtype="png", filename="wheel.png")
    return bytes(message)


MAIL_CASES: list[tuple[str, Callable[[Path], bytes], str]] = [
    ("cut.mbox", truncated_mbox, "truncated mailbox"),
    ("photos.eml", attachment_only, "no text part"),
    (
        "others.mbox",
        lambda tmp: write_mbox(tmp / "o.mbox", [mail("Hanne <hanne@example.org>", "Bread", "Rye.")]).read_bytes(),
        "none of its 1 message(s) was sent from the author's addresses",
    ),
    ("bytes.mbox", lambda tmp: b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not an mbox mailbox"),
    ("empty.mbox", lambda tmp: b"", "not an mbox mailbox: the file is empty"),
    ("quotes.eml", lambda tmp: bytes(mail(ME, "Fwd", "> all quoted\n> nothing new\n")), "no text of its own"),
]


# --- chat -------------------------------------------------------------------------------------------------------


def telegram_export(messages: list[tuple[str, str, object]]) -> dict:
    entries = [
        {"id": n, "type": "message", "date": date, "from": sender, "text": text}
        for n, (date, sender, text) in enumerate(messages)
    ]
    entries.insert(1, {"id": 99, "type": "service", "date": "2024-03-16T08:42:00", "actor": "Tomas", "text": ""})
    return {"name": "Tomas", "type": "personal_chat", "id": 1, "messages": entries}


TELEGRAM = [
    ("2024-03-16T08:41:10", "Tomas", "Are we opening at nine?"),
    ("2024-03-16T08:43:55", AUTHOR, "Nine. Wind is good for trade."),
    ("2024-03-16T08:44:30", "Tomas", "Should I start on the headset?"),
    ("2024-03-16T08:44:50", "Tomas", "Or the wheel?"),
    ("2024-03-16T08:47:02", AUTHOR, ["Read the bicycle ", {"type": "bold", "text": "first"}, "."]),
    ("2024-03-16T08:47:40", AUTHOR, "Then the headset."),
    ("2024-03-16T17:52:18", "Tomas", ""),  # a photo: no text
    ("2024-03-16T17:58:31", AUTHOR, "Good. Tell Moth goodnight."),
]


def test_a_telegram_export_keeps_only_the_authors_messages_by_conversation(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(telegram_export(TELEGRAM)), encoding="utf-8")
    note = parse(path)
    assert note.text == (
        "## 2024-03-16 08:41\n\nNine. Wind is good for trade.\n\nRead the bicycle first.\n\nThen the headset.\n\n"
        "## 2024-03-16 17:58\n\nGood. Tell Moth goodnight."
    )
    assert "Tomas" not in note.text and "opening" not in note.text
    answered = [(note.text[c["start"] : c["end"]], c["replying_to"]) for c in note.context]
    assert answered == [
        ("Nine. Wind is good for trade.", ["Are we opening at nine?"]),
        ("Read the bicycle first.", ["Should I start on the headset?", "Or the wheel?"]),
    ]
    assert note.metadata == {
        "messages": 8,
        "by_author": 4,
        "conversations": 2,
        "media_ignored": 1,
        "other_lines_as_context": 3,
    }
    assert (note.format, note.source_kind, note.title) == ("telegram", "chat", "Tomas")
    longer_gap = parse(path, SourceSettings.from_lists("", AUTHOR, conversation_gap_minutes=600))
    assert longer_gap.metadata["conversations"] == 1 and longer_gap.text.count("## ") == 1


def test_a_full_telegram_export_reads_every_chat(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    export = {
        "about": "…",
        "chats": {"about": "…", "list": [telegram_export(TELEGRAM[:2]), telegram_export(TELEGRAM[7:])]},
    }
    path.write_text(json.dumps(export), encoding="utf-8")
    note = parse(path)
    assert note.title == "Telegram chats" and note.text.split("\n\n")[1::2] == [TELEGRAM[1][2], TELEGRAM[7][2]]


ANDROID = """11/03/2024, 09:14 - Messages and calls are end-to-end encrypted. No one outside of this chat can read them.
11/03/2024, 09:14 - Hanne Berg: Is the basket wheel ready?
11/03/2024, 09:20 - Ilona Varga: Ready. It was tired, not bent.
Come after ten; the shop is quiet then.
11/03/2024, 09:21 - Ilona Varga: <Media omitted>
13/03/2024, 18:02 - Hanne Berg: Thank you!
13/03/2024, 18:05 - Ilona Varga: Moth says thank you for the bread.
"""
IOS = (
    "[3/11/24, 9:14:05\u202fAM] Hanne Berg: Is the basket wheel ready?\n"
    "[3/11/24, 9:20:00\u202fAM] Ilona: Ready. It was tired, not bent.\n"
    "[3/11/24, 9:21:00\u202fAM] Ilona: \u200eimage omitted\n"
    "[3/13/24, 6:05:00\u202fPM] Ilona: Moth says thank you for the bread.\n"
)


@pytest.mark.parametrize("name, export", [("WhatsApp Chat with Hanne.txt", ANDROID), ("_chat.txt", IOS)])
def test_a_whatsapp_export_keeps_only_the_authors_messages_by_conversation(
    tmp_path: Path, name: str, export: str
) -> None:
    path = tmp_path / name
    path.write_text(export, encoding="utf-8")
    note = parse(path)
    ready = (
        "Ready. It was tired, not bent.\nCome after ten; the shop is quiet then."
        if export is ANDROID
        else ("Ready. It was tired, not bent.")
    )
    assert note.text == f"## 2024-03-11 09:14\n\n{ready}\n\n## 2024-03-13 18:0{2 if export is ANDROID else 5}\n\n" + (
        "Moth says thank you for the bread."
    )
    assert "basket wheel ready" not in note.text and "encrypted" not in note.text
    assert note.context[0]["replying_to"] == ["Is the basket wheel ready?"]
    assert (note.format, note.source_kind, note.metadata["media_ignored"]) == ("whatsapp", "chat", 1)


def test_a_text_note_that_is_a_whatsapp_log_is_read_as_one_and_others_stay_text(tmp_path: Path) -> None:
    (tmp_path / "hanne.txt").write_text(ANDROID, encoding="utf-8")
    (tmp_path / "plain.txt").write_text("11/03/2024, a Monday. The wheel was tired.\n", encoding="utf-8")
    assert parse(tmp_path / "hanne.txt").source_kind == "chat"
    plain = parse(tmp_path / "plain.txt")
    assert (plain.source_kind, plain.text) == ("note", "11/03/2024, a Monday. The wheel was tired.")


CHAT_CASES: list[tuple[str, Callable[[Path], bytes], str]] = [
    (
        "layout/result.json",
        lambda tmp: json.dumps([{"sender": "Ilona", "text": "hi"}]).encode(),
        "not a Telegram export",
    ),
    (
        "no-date/result.json",
        lambda tmp: json.dumps({"messages": [{"type": "message", "text": "x"}]}).encode(),
        "not a Telegram export",
    ),
    ("broken/result.json", lambda tmp: b'{"name": "Tomas", "messages": [', "invalid JSON"),
    (
        "mine/result.json",
        lambda tmp: json.dumps(telegram_export(TELEGRAM[:1])).encode(),
        "none of its 1 message(s) is from the author",
    ),
    (
        "WhatsApp Chat with Hanne.txt",
        lambda tmp: b"Mar 11, 2024, 9:14 AM - Ilona Varga: Ready.\n",
        "line 1 does not start with a date and time in a format it reads",
    ),
    ("_chat.txt", lambda tmp: ANDROID.replace("Ilona Varga", "Somebody").encode(), "is from the author"),
    ("WhatsApp Chat with Tomas.txt", lambda tmp: b"31/13/2024, 09:14 - Ilona Varga: x\n", "not a calendar date"),
]


# --- web pages ----------------------------------------------------------------------------------------------------

BLOG = (SAMPLE_NOTES / "blog" / "truing-by-ear.html").read_bytes()


def test_a_saved_blog_post_gives_its_article_without_navigation_or_footer(tmp_path: Path) -> None:
    path = tmp_path / "post.htm"
    path.write_bytes(BLOG)
    note = parse(path)
    assert note.text.startswith("# Truing a wheel by ear\n\nHere is the thing: a wheel tells you")
    assert "\n\n## The stand is a second opinion\n\nMy father's truing stand" in note.text
    assert note.text.endswith("a wheel that is quiet under a rider is straight enough.\n\nSmall tools, small wins.")
    for boilerplate in (
        "Home",
        "Repairs and prices",
        "Recent posts",
        "Opening hours",
        "Privacy",
        "Share this",
        "Posted on",
    ):
        assert boilerplate not in note.text
    assert (note.title, note.format, note.source_kind) == ("Truing a wheel by ear", "html", "web")
    assert note.metadata == {"author": "Ilona Varga", "date": "2024-05-12"}


WEB_CASES: list[tuple[str, Callable[[Path], bytes], str]] = [
    (
        "nav.html",
        lambda tmp: (
            b"<html><body><nav><a href='/'>Home</a> <a href='/blog'>Blog</a></nav><footer>(c) 2024</footer></body></html>"
        ),
        "no main text found",
    ),
    ("binary.html", lambda tmp: bytes(range(256)) * 16, "binary"),
    ("empty.htm", lambda tmp: b"", "the file is empty"),
    ("huge.html", lambda tmp: b"<p>" + b"spoke " * (web.MAX_PAGE_BYTES // 6 + 10), "too large for a web page"),
]


# --- e-books ------------------------------------------------------------------------------------------------------

CHAPTERS = [
    ("frost", "<h1>First frost</h1><p>The first frost comes to the shop floor first.</p>"),
    (
        "hives",
        "<h1>The quiet hives</h1><div><p>The hives go quiet.</p><h2>Mouse guards</h2><ul><li><p>On before the frost.</p></li></ul></div>",
    ),
    ("empty", "<p> </p>"),
]


def test_an_epub_is_read_chapter_by_chapter_with_its_headings(tmp_path: Path) -> None:
    note = parse(write_epub(tmp_path / "almanac.epub", "A Winter Almanac", CHAPTERS))
    assert note.text == (
        "# First frost\n\nThe first frost comes to the shop floor first.\n\n"
        "# The quiet hives\n\nThe hives go quiet.\n\n## Mouse guards\n\nOn before the frost."
    )
    assert note.metadata == {"chapters": 2, "title": "A Winter Almanac", "author": AUTHOR, "language": "en"}
    assert (note.title, note.format, note.source_kind) == ("A Winter Almanac", "epub", "ebook")


def with_encryption(tmp: Path, algorithm: str) -> bytes:
    """A copy of a good book with META-INF/encryption.xml naming `algorithm` for one of its files."""
    good = write_epub(tmp / f"good-{len(algorithm)}.epub", "Book", CHAPTERS[:1])
    copy = tmp / f"copy-{len(algorithm)}.epub"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(copy, "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item))
        target.writestr(
            "META-INF/encryption.xml",
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            f'<enc:EncryptionMethod Algorithm="{algorithm}"/><enc:CipherData><enc:CipherReference URI="EPUB/frost.xhtml"/>'
            "</enc:CipherData></enc:EncryptedData></encryption>",
        )
    return copy.read_bytes()


def test_font_obfuscation_is_not_drm(tmp_path: Path) -> None:
    path = tmp_path / "fonts.epub"
    path.write_bytes(with_encryption(tmp_path, "http://www.idpf.org/2008/embedding"))
    assert parse(path).text.startswith("# First frost")


EBOOK_CASES: list[tuple[str, Callable[[Path], bytes], str]] = [
    ("drm.epub", lambda tmp: with_encryption(tmp, "http://www.w3.org/2001/04/xmlenc#aes128-cbc"), "DRM-protected"),
    (
        "corrupt.epub",
        lambda tmp: write_epub(tmp / "c.epub", "Book", CHAPTERS[:1]).read_bytes()[:-200],
        "cannot be parsed as EPUB",
    ),
    ("blank.epub", lambda tmp: write_epub(tmp / "b.epub", "Book", CHAPTERS[2:]).read_bytes(), "no chapters with text"),
    ("text.epub", lambda tmp: b"Chapter one. It was a dark and windy night.", "not a zip archive"),
    ("zero.epub", lambda tmp: b"", "the file is empty"),
]

BAD_CASES = MAIL_CASES + CHAT_CASES + WEB_CASES + EBOOK_CASES


@pytest.mark.parametrize("name, make, reason", BAD_CASES, ids=[case[0] for case in BAD_CASES])
def test_a_bad_source_raises_an_error_naming_the_file_and_the_reason(
    tmp_path: Path, name: str, make: Callable[[Path], bytes], reason: str
) -> None:
    path = tmp_path / "notes" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(make(tmp_path))
    with pytest.raises(NoteParseError) as caught:
        parse(path, notes_dir=tmp_path / "notes")
    assert caught.value.path == name and reason in caught.value.reason
    assert str(caught.value).startswith(f"{name}: ")


def test_without_author_settings_mail_and_chat_say_which_setting_to_set(tmp_path: Path) -> None:
    mbox = write_mbox(tmp_path / "sent.mbox", [mail(ME, "Swarms", SWARM)])
    chat = tmp_path / "result.json"
    chat.write_text(json.dumps(telegram_export(TELEGRAM)), encoding="utf-8")
    with pytest.raises(NoteParseError, match="set FINE_TUNE_DAG_AUTHOR_ADDRESSES"):
        parse(mbox, SourceSettings())
    with pytest.raises(NoteParseError, match="set FINE_TUNE_DAG_AUTHOR_NAMES"):
        parse(chat, SourceSettings())


# --- front matter -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "front, tags",
    [
        ("---\ntitle: Winter jobs\ntags: [workshop, '#bees']\n---\n", ["workshop", "bees"]),  # Obsidian
        ("---\ntitle: Winter jobs\ntags: workshop bees\n---\n", ["workshop", "bees"]),  # Jekyll
        ('+++\ntitle = "Winter jobs"\ntags = ["workshop", "bees"]\n+++\n', ["workshop", "bees"]),  # Hugo
        ('{\n"title": "Winter jobs", "tags": "workshop, bees"\n}\n', ["workshop", "bees"]),
    ],
    ids=["obsidian-yaml", "jekyll-yaml", "hugo-toml", "json"],
)
def test_front_matter_becomes_title_and_tags_and_never_text(tmp_path: Path, front: str, tags: list[str]) -> None:
    path = tmp_path / "jobs.md"
    path.write_text(f"{front}\nMouse guards on Agnes.\n", encoding="utf-8")
    note = parse_untouched(path, tmp_path)
    assert note.text == "Mouse guards on Agnes."
    assert note.title == "Winter jobs" and note.metadata == {"title": "Winter jobs", "tags": tags}


def test_invalid_toml_front_matter_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.md"
    path.write_text('+++\ntitle = "unclosed\n+++\nBody.\n', encoding="utf-8")
    with pytest.raises(NoteParseError, match=r"^bad\.md: invalid TOML front matter"):
        parse_untouched(path, tmp_path)


# --- the shipped samples, the graph, the sensor and `rejected` ----------------------------------------------------


def test_the_shipped_samples_of_each_source_parse_with_the_demos_author_settings() -> None:
    makefile = (SAMPLE_NOTES.parents[1] / "Makefile").read_text(encoding="utf-8")
    assert f"FINE_TUNE_DAG_AUTHOR_ADDRESSES ?= {AUTHOR_ADDRESS}" in makefile
    assert f"FINE_TUNE_DAG_AUTHOR_NAMES ?= {AUTHOR}" in makefile
    settings = SourceSettings.from_lists(AUTHOR_ADDRESS, AUTHOR)
    kinds = {}
    for path in discover_notes(SAMPLE_NOTES).values():
        note = parse_note(path, SAMPLE_NOTES, settings)
        kinds[note.path] = note.source_kind
        if note.source_kind != "note":
            assert len(note.text.split()) < 400, note.path  # small: the demo's dataset grows only a little
    assert {kinds[p] for p in ("mail/sent.mbox", "telegram-tomas/result.json", "blog/truing-by-ear.html")} == {
        "mail",
        "chat",
        "web",
    }
    assert kinds["a-winter-almanac.epub"] == "ebook" and kinds["chain-wear.md"] == "note"
    mailbox = parse_note(SAMPLE_NOTES / "mail" / "sent.mbox", SAMPLE_NOTES, settings)
    assert mailbox.metadata["skipped"] == {"from others": 1} and mailbox.metadata["attachments_ignored"] == 1
    assert "wrote:" not in mailbox.text and "Ferry Lane, Kettleford" not in mailbox.text


def test_sources_go_through_the_graph_to_passages_and_bad_ones_land_in_rejected_notes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    notes, data = tmp_path / "notes", tmp_path / "data"
    for relative in (
        "mail/sent.mbox",
        "telegram-tomas/result.json",
        "blog/truing-by-ear.html",
        "a-winter-almanac.epub",
    ):
        (notes / relative).parent.mkdir(parents=True, exist_ok=True)
        (notes / relative).write_bytes((SAMPLE_NOTES / relative).read_bytes())
    bad = [("mail/cut.mbox", MAIL_CASES[0]), ("chat/result.json", CHAT_CASES[2]), ("web/nav.html", WEB_CASES[0])]
    bad += [("books/drm.epub", EBOOK_CASES[0])]
    for relative, (_, make, _) in bad:
        (notes / relative).parent.mkdir(parents=True, exist_ok=True)
        (notes / relative).write_bytes(make(tmp_path))
    (notes / "scan.png").write_bytes(b"\x89PNG")
    sources = SourcesResource(author_addresses=AUTHOR_ADDRESS, author_names=AUTHOR)
    defs = scripted_definitions(notes, data, tiny_model_dir, sources=sources)  # type: ignore[arg-type]
    keys = discover_notes(notes)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("notes", list(keys))
        outcomes = {
            keys_path.relative_to(notes).as_posix(): dg.materialize(
                [raw_notes, passages],
                partition_key=key,
                resources=defs.resources,
                instance=instance,
                raise_on_error=False,
            ).success
            for key, keys_path in keys.items()
        }
    assert outcomes == {
        **dict.fromkeys(["mail/sent.mbox", "telegram-tomas/result.json", "blog/truing-by-ear.html"], True),
        "a-winter-almanac.epub": True,
        **{relative: False for relative, _ in bad},
    }
    db = Warehouse(data / "warehouse.duckdb")
    rejected = db.query("SELECT path, reason FROM rejected_notes").set_index("path")["reason"].to_dict()
    assert {path: case[2] in rejected[path] for path, case in bad} == {path: True for path, _ in bad}
    parsed = db.query("SELECT note_id, path, text, source_kind, context FROM raw_notes").set_index("path")
    assert parsed["source_kind"].to_dict() == {
        "mail/sent.mbox": "mail",
        "telegram-tomas/result.json": "chat",
        "blog/truing-by-ear.html": "web",
        "a-winter-almanac.epub": "ebook",
    }
    assert note_source_kinds(db, list(parsed["note_id"])) == dict(zip(parsed["note_id"], parsed["source_kind"]))
    chat = parsed.loc["telegram-tomas/result.json"]
    assert [chat.text[c["start"] : c["end"]] for c in json.loads(chat.context)][0].startswith("Nine. Wind is good")
    rows = db.query("SELECT n.path, p.start_char, p.end_char, p.text FROM passages p JOIN raw_notes n USING (note_id)")
    assert set(rows["path"]) == set(parsed.index)
    assert all(parsed.loc[r.path, "text"][r.start_char : r.end_char] == r.text for r in rows.itertuples())
    chat_passages = rows[rows["path"] == "telegram-tomas/result.json"]["text"]
    assert not chat_passages.str.contains("Are we opening|Tomas").any()  # the other side never becomes text


def test_files_of_a_type_not_read_are_listed_with_the_reason_and_debris_stays_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes, data = tmp_path / "notes", tmp_path / "data"
    write(notes / "a.md", "# A\n\nfirst")
    write(notes / "scans" / "receipt.png", "png")
    write(notes / "notes.odt", "odt")
    for debris in (".hidden.mbox", "~$essay.epub", "post.html.swp", ".obsidian/app.json"):
        write(notes / debris, "debris")
    watcher = Watcher(notes, data)

    def tick(cursor: str | None) -> tuple[dg.SensorResult, list[str]]:
        with dg.build_sensor_context(
            instance=watcher.instance, cursor=cursor, definitions=watcher.defs, resources=watcher.defs.resources
        ) as context:
            warned: list[str] = []
            context.log.warning = warned.append  # type: ignore[method-assign]
            return watcher.sensor(context), warned

    first, warned = tick(None)
    supported = ".md, .markdown, .txt, .pdf, .docx, .mbox, .eml, .json, .html, .htm, .epub"
    assert warned == [
        f"notes.odt is not read: unsupported file type '.odt' (supported: {supported})",
        f"scans/receipt.png is not read: unsupported file type '.png' (supported: {supported})",
    ]
    assert [r.tags[NOTE_PATH_TAG] for r in first.run_requests] == ["a.md"]
    again, warned_again = tick(first.cursor)
    assert warned_again == []  # named once, then counted in every tick's summary
    assert again.skip_reason and "2 of a type not read" in again.skip_reason.skip_message

    main(["--notes-dir", str(notes), "--data-dir", str(data), "rejected"])
    listed = capsys.readouterr().out
    assert "scans/receipt.png: unsupported file type '.png'" in listed and "notes.odt: unsupported" in listed
    assert "no rejected notes, 2 files of a type not read" in listed
    assert "hidden" not in listed and "essay" not in listed and "swp" not in listed and "app.json" not in listed


def test_the_sources_resource_reads_comma_separated_settings() -> None:
    settings = SourcesResource(author_addresses=" A@X.org ,b@y.org,", author_names="Ilona,  Ilona  Varga").settings()
    assert settings.author_addresses == ("a@x.org", "b@y.org")
    assert settings.is_author_name("ilona varga") and not settings.is_author_name("Hanne")
    assert settings.is_author_address("A@x.ORG ")
