"""Note ingestion: real Markdown, text, PDF and DOCX files in, deterministic text and clear errors out."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
from pathlib import Path
from typing import Callable

import docx
import pytest
from fpdf import FPDF
from pypdf import PdfWriter

from fine_tune_dag.core.ingest.notes import (
    NoteParseError,
    ParsedNote,
    _PdfLine,
    _reflow_pdf_pages,
    discover_notes,
    find_note,
    is_ignored_note_file,
    key_of_note,
    note_partition_key,
    parse_note,
)

KEY_PATTERN = re.compile(r"^[a-z0-9_-]+$")

CHAIN = (
    "A chain wears slowly, then all at once. The rollers stretch a little each ride, the teeth of the "
    "cassette follow them, and one morning the new chain skips on every hard pedal stroke."
)
BEES = (
    "The bees were quiet in the cold. They cluster around the queen and shiver to keep her warm, "
    "eating the honey they stored in summer, and they do not leave the hive unless the sun is out."
)
SHORT = "Patience is a tool too."
RIVER = (
    "The river was loud all night. In the morning the water had dropped again and the stones at "
    "the edge were dry, which meant the rain in the hills had stopped before midnight."
)


def parse_untouched(path: Path, notes_dir: Path) -> ParsedNote:
    """Parse, and prove the note file was only read: same bytes, same modification time."""
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    try:
        return parse_note(path, notes_dir)
    finally:
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def write_pdf(path: Path, pages: list[list[str]], heading: str | None = None, spacing: float = 4, **info: str) -> Path:
    """A real PDF laid out by fpdf2: wrapped paragraphs, optional bold heading, one list per page."""
    pdf = FPDF()
    if "title" in info:
        pdf.set_title(info["title"])
    if "author" in info:
        pdf.set_author(info["author"])
    for index, paragraphs in enumerate(pages):
        pdf.add_page()
        if heading and index == 0:
            pdf.set_font("Helvetica", "B", 16)
            pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        pdf.set_font("Helvetica", size=12)
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(spacing)
    pdf.output(str(path))
    return path


def encrypted_pdf_bytes(tmp_path: Path) -> bytes:
    writer = PdfWriter(clone_from=write_pdf(tmp_path / "plain.pdf", [[CHAIN]]))
    writer.encrypt("open sesame")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def image_only_pdf_bytes() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 80, 120, style="F")
    return bytes(pdf.output())


# --- partition keys -------------------------------------------------------------------------


def test_partition_key_is_a_readable_slug_plus_path_hash() -> None:
    key = note_partition_key("essays/On Walking.md")
    digest = hashlib.sha1(b"essays/On Walking.md").hexdigest()[:8]
    assert key == f"essays-on-walking-md-{digest}"
    assert key == "essays-on-walking-md-2ac2799c"  # pinned: keys must not drift between releases


@pytest.mark.parametrize(
    "relative, slug",
    [
        ("notes/Café crème.md", "notes-cafe-creme-md"),
        ("Über/straße.txt", "uber-strae-txt"),
        ("🚲 ride 🐝.md", "ride-md"),
        ("日本語", "note"),
        ("🚲🐝", "note"),
        ("a/b/c/deeply nested (draft) v2.docx", "a-b-c-deeply-nested-draft-v2-docx"),
        ("x" * 200 + ".pdf", "x" * 48),
    ],
)
def test_partition_key_shape(relative: str, slug: str) -> None:
    key = note_partition_key(relative)
    assert KEY_PATTERN.match(key)
    assert key == f"{slug}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"
    assert note_partition_key(relative) == key


def test_partition_keys_are_unique_when_slugs_collide() -> None:
    paths = ["a b.md", "a-b.md", "A B.md", "a_b.md", "a/b.md", "a b.MD"]
    keys = [note_partition_key(p) for p in paths]
    assert len(set(keys)) == len(paths)
    assert {k.rsplit("-", 1)[0] for k in keys} == {"a-b-md"}


def test_names_in_two_normalisation_forms_are_two_notes(tmp_path: Path) -> None:
    decomposed, composed = "Cafe\u0301.md", "Caf\u00e9.md"
    assert note_partition_key(decomposed) != note_partition_key(composed)
    (tmp_path / decomposed).write_text("decomposed", encoding="utf-8")
    (tmp_path / composed).write_text("composed", encoding="utf-8")
    found = discover_notes(tmp_path)
    assert {p.read_text() for p in found.values()} == {"decomposed", "composed"}


def test_a_taken_key_gives_the_second_file_a_twin_key() -> None:
    key = note_partition_key("a.md")
    twin = key_of_note("a.md", {key})
    assert twin != key and twin.startswith("a-md-") and KEY_PATTERN.match(twin)
    assert key_of_note("a.md", set()) == key


# --- discovery ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ignored",
    [
        (".DS_Store", True),
        (".draft.md", True),
        ("~$report.docx", True),
        ("note.md.swp", True),
        ("upload.TMP", True),
        ("note.md~", True),
        ("note.md", False),
        ("notes~draft.md", False),
    ],
)
def test_is_ignored_note_file(name: str, ignored: bool) -> None:
    assert is_ignored_note_file(name) is ignored


def test_discover_notes_walks_recursively_and_skips_debris(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    kept = ["b.md", "A.TXT", "essays/On Walking.md", "essays/deep/x.markdown", "papers/p.pdf", "papers/w.docx"]
    skipped = [
        ".hidden.md",
        "~$w.docx",
        "b.md.swp",
        "c.tmp",
        "b.md~",
        "photo.png",
        "README",
        ".git/HEAD.md",
        "essays/.obsidian/workspace.md",
    ]
    for relative in kept + skipped:
        (notes / relative).parent.mkdir(parents=True, exist_ok=True)
        (notes / relative).write_text("text", encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.md").write_text("not a note here", encoding="utf-8")
    os.symlink(outside, notes / "link", target_is_directory=True)

    found = discover_notes(notes)

    assert sorted(p.relative_to(notes).as_posix() for p in found.values()) == sorted(kept)
    assert all(p.is_absolute() for p in found.values())
    assert all(key == note_partition_key(p.relative_to(notes).as_posix()) for key, p in found.items())
    assert list(found) == list(discover_notes(notes))  # deterministic order


def test_discover_notes_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover_notes(tmp_path / "nowhere")


def test_find_note_returns_the_file_or_names_key_and_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    note = tmp_path / "sub" / "Chain Wear.md"
    note.write_text("# Chain wear\n", encoding="utf-8")
    key = note_partition_key("sub/Chain Wear.md")
    assert find_note(tmp_path, key) == note
    note.unlink()
    with pytest.raises((KeyError, FileNotFoundError)) as error:
        find_note(tmp_path, key)
    assert key in str(error.value) and str(tmp_path) in str(error.value)


def test_find_note_takes_the_sensors_path_without_walking_the_folder_and_never_a_wrong_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fine_tune_dag.core.ingest.notes as ingest

    (tmp_path / "sub").mkdir()
    note, other = tmp_path / "sub" / "Chain Wear.md", tmp_path / "bees.md"
    note.write_text("# Chain wear\n", encoding="utf-8")
    other.write_text("# Bees\n", encoding="utf-8")
    key = note_partition_key("sub/Chain Wear.md")
    walks: list[Path] = []
    monkeypatch.setattr(ingest, "discover_notes", lambda folder: walks.append(folder) or discover_notes(folder))
    assert find_note(tmp_path, key, hint="sub/Chain Wear.md") == note and walks == []
    # a hint naming another note's file, or a file since renamed, is not trusted: the folder decides
    assert find_note(tmp_path, key, hint="bees.md") == note and walks == [tmp_path]
    note.rename(tmp_path / "sub" / "Chain.md")
    with pytest.raises(FileNotFoundError):
        find_note(tmp_path, key, hint="sub/Chain Wear.md")


# --- Markdown and text ----------------------------------------------------------------------


def test_markdown_front_matter_becomes_metadata_and_body_stays_verbatim(tmp_path: Path) -> None:
    body = f"# Chains\n\n{CHAIN}\n\n## Bees\n\n{BEES}\n"
    front = "---\ntitle: On Chains and Bees\ndate: 2024-03-01\ntags: [bikes, bees]\n---\n"
    path = tmp_path / "essays" / "chains.md"
    path.parent.mkdir()
    path.write_text(front + "\n" + body, encoding="utf-8")

    note = parse_untouched(path, tmp_path)

    assert note.title == "On Chains and Bees"
    assert note.metadata == {"title": "On Chains and Bees", "date": "2024-03-01", "tags": ["bikes", "bees"]}
    assert note.text == body.rstrip()
    assert note.format == "markdown" and note.encoding == "utf-8"
    assert note.path == "essays/chains.md" and note.note_id == note_partition_key("essays/chains.md")
    assert note.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert note.char_count == len(note.text)


def test_markdown_title_falls_back_to_first_heading_then_file_stem(tmp_path: Path) -> None:
    headed = tmp_path / "x.md"
    headed.write_text(f"```sh\n# not a title\n```\n\nIntro.\n\n# Chain Wear #\n\n{CHAIN}\n", encoding="utf-8")
    plain = tmp_path / "chain-wear.md"
    plain.write_text(CHAIN + "\r\n\r\n" + BEES + "\r\n", encoding="utf-8")

    assert parse_untouched(headed, tmp_path).title == "Chain Wear"
    note = parse_untouched(plain, tmp_path)
    assert note.title == "Chain wear"
    assert note.text == f"{CHAIN}\n\n{BEES}" and note.metadata == {}


def test_markdown_starting_with_a_rule_keeps_its_prose(tmp_path: Path) -> None:
    path = tmp_path / "rules.md"
    path.write_text(f"---\n{SHORT}\n---\n\n{CHAIN}\n", encoding="utf-8")
    note = parse_untouched(path, tmp_path)
    assert note.text == f"---\n{SHORT}\n---\n\n{CHAIN}" and note.metadata == {}


def test_markdown_invalid_front_matter_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.md"
    path.write_text("---\ntitle: [unclosed\n---\nBody.\n", encoding="utf-8")
    with pytest.raises(NoteParseError, match=r"^bad\.md: .*front matter"):
        parse_untouched(path, tmp_path)


TEXT = "Café au lait, naïve façade.\nIch höre die Bäume rauschen, à bientôt!\n\nZweiter Absatz über Brücken."


@pytest.mark.parametrize(
    "raw, encodings",
    [
        (TEXT.encode("utf-8"), {"utf-8"}),
        (b"\xef\xbb\xbf" + TEXT.encode("utf-8"), {"utf-8-sig"}),
        (TEXT.encode("utf-16"), {"utf-16"}),
        (b"\xfe\xff" + TEXT.encode("utf-16-be"), {"utf-16"}),
        (TEXT.encode("latin-1"), {"cp1252", "latin_1"}),
        (TEXT.replace("\n", "\r\n").encode("cp1252"), {"cp1252", "latin_1"}),
    ],
)
def test_text_encodings_are_detected(tmp_path: Path, raw: bytes, encodings: set[str]) -> None:
    path = tmp_path / "journal.txt"
    path.write_bytes(raw)
    note = parse_untouched(path, tmp_path)
    assert note.text == TEXT
    assert note.encoding in encodings
    assert note.title == "Café au lait, naïve façade."
    assert note.format == "text" and note.metadata == {}


def test_short_latin1_prefers_western_encoding(tmp_path: Path) -> None:
    path = tmp_path / "dessert.txt"
    path.write_bytes("Crème brûlée.".encode("latin-1"))
    assert parse_untouched(path, tmp_path).text == "Crème brûlée."


def test_text_with_a_long_first_line_is_titled_from_its_stem(tmp_path: Path) -> None:
    path = tmp_path / "river_notes.txt"
    path.write_text("\n\n" + RIVER + "\n", encoding="utf-8")
    note = parse_untouched(path, tmp_path)
    assert note.title == "River notes"
    assert note.text == RIVER


# --- PDF ------------------------------------------------------------------------------------


def test_pdf_paragraphs_are_rebuilt_across_pages(tmp_path: Path) -> None:
    path = write_pdf(
        tmp_path / "walks.pdf",
        [[CHAIN, SHORT, BEES * 2], [RIVER]],
        heading="On Walking",
        title="Walking Notes",
        author="Ada Writer",
    )

    note = parse_untouched(path, tmp_path)

    assert note.text == "\n\n".join(["On Walking", CHAIN, SHORT, BEES * 2, RIVER])
    assert note.title == "Walking Notes"
    assert note.metadata == {"pages": 2, "title": "Walking Notes", "author": "Ada Writer"}
    assert note.format == "pdf" and note.encoding is None
    assert parse_note(path, tmp_path) == note  # deterministic for the same bytes


def test_pdf_without_paragraph_spacing_uses_line_lengths(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "dense.pdf", [[CHAIN, SHORT, BEES]], heading="Workshop", spacing=0)
    note = parse_untouched(path, tmp_path)
    assert note.text == "\n\n".join(["Workshop", CHAIN, SHORT, BEES])
    assert note.title == "Workshop" and "title" not in note.metadata


def test_pdf_reflow_joins_wrapped_lines_and_undoes_hyphenation() -> None:
    lines = [
        "The mechanic oils the chain first, always the chain, because an exam-",
        "ple of neglect is a drivetrain that grinds on every climb and Jean-",
        "Paul knows it. He says so at length, to anyone who will listen.",
        "Short closing line.",
        "Next paragraph begins with a line that is about as long as the others,",
        "and ends here.",
    ]
    text = _reflow_pdf_pages([[_PdfLine(line, None) for line in lines]])
    assert text == (
        "The mechanic oils the chain first, always the chain, because an example of neglect is a "
        "drivetrain that grinds on every climb and Jean-Paul knows it. He says so at length, to anyone "
        "who will listen. Short closing line.\n\n"
        "Next paragraph begins with a line that is about as long as the others, and ends here."
    )


# --- DOCX -----------------------------------------------------------------------------------


def write_docx(path: Path, title: str | None = None) -> Path:
    document = docx.Document()
    if title:
        document.core_properties.title = title
    document.core_properties.author = "Ada Writer"
    document.add_heading("Bench Notes", level=0)
    document.add_heading("Chains", level=1)
    document.add_paragraph(CHAIN)
    document.add_paragraph("   ")
    document.add_heading("Bees in winter", level=2)
    document.add_paragraph(BEES)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Tool"
    table.cell(0, 1).text = "Use"
    merged = table.cell(1, 0).merge(table.cell(1, 1))
    merged.text = "Chain checker for stretch"
    document.add_paragraph(SHORT)
    document.save(str(path))
    return path


def test_docx_headings_become_markdown_and_properties_metadata(tmp_path: Path) -> None:
    path = write_docx(tmp_path / "bench.docx", title="Workbench")

    note = parse_untouched(path, tmp_path)

    assert note.text == "\n\n".join(
        ["# Bench Notes", "# Chains", CHAIN, "## Bees in winter", BEES]
        + ["Tool", "Use", "Chain checker for stretch", SHORT]
    )
    assert note.title == "Workbench"
    assert note.metadata["title"] == "Workbench" and note.metadata["author"] == "Ada Writer"
    assert re.match(r"^\d{4}-\d{2}-\d{2}T", note.metadata["created"])
    assert note.format == "docx" and note.encoding is None


def test_docx_title_falls_back_to_first_heading(tmp_path: Path) -> None:
    note = parse_untouched(write_docx(tmp_path / "bench.docx"), tmp_path)
    assert note.title == "Bench Notes" and "title" not in note.metadata


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("empty.md", lambda tmp: b"", "empty note"),
        ("blank.txt", lambda tmp: b"  \n\t\r\n   \n", "empty note"),
        ("only-front-matter.md", lambda tmp: b"---\ntitle: x\n---\n\n", "empty note"),
        ("garbage.md", lambda tmp: random.Random(0).randbytes(4096), "binary"),
        ("controls.txt", lambda tmp: bytes(range(1, 32)) * 40, "binary"),
        ("corrupt.pdf", lambda tmp: b"%PDF-1.4\n1 0 obj << /Type /Catalog", "cannot be parsed as PDF"),
        ("zero.pdf", lambda tmp: b"", "cannot be parsed as PDF"),
        ("locked.pdf", encrypted_pdf_bytes, "encrypted"),
        ("scan.pdf", lambda tmp: image_only_pdf_bytes(), "no extractable text (scanned image?)"),
        ("not-a-zip.docx", lambda tmp: b"This is plain text pretending to be Word.", "cannot be parsed as DOCX"),
        ("zero.docx", lambda tmp: b"", "empty"),
        ("broken-zip.docx", lambda tmp: b"PK\x03\x04" + b"\x00" * 64, "cannot be parsed as DOCX"),
    ],
)
def test_unparseable_notes_raise_errors_naming_file_and_reason(
    tmp_path: Path, name: str, make: Callable[[Path], bytes], reason: str
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    path = folder / name
    path.write_bytes(make(tmp_path))

    with pytest.raises(NoteParseError) as caught:
        parse_untouched(path, tmp_path)

    error = caught.value
    assert error.path == f"inbox/{name}"
    assert reason in error.reason
    assert str(error).startswith(f"inbox/{name}: ") and reason in str(error)


def test_unsupported_suffix_is_a_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(NoteParseError, match=r"photo\.png: unsupported file type"):
        parse_note(path, tmp_path)


def test_note_parse_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(NoteParseError("essays/x.pdf", "cannot be parsed as PDF: boom")))
    assert (error.path, error.reason, str(error)) == (
        "essays/x.pdf",
        "cannot be parsed as PDF: boom",
        "essays/x.pdf: cannot be parsed as PDF: boom",
    )


def test_latin1_mistaken_for_baltic_by_charset_detection_is_read_as_western(tmp_path: Path) -> None:
    path = tmp_path / "dessert.txt"
    path.write_bytes("Crème brûlée at the café, déjà vu in the rain.\n".encode("latin-1") * 4)
    note = parse_untouched(path, tmp_path)
    assert note.encoding == "cp1252" and note.text.startswith("Crème brûlée at the café, déjà vu")
