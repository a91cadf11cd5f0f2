"""Sample notes written on the fly: small Markdown files on a few topics, half with front matter."""

from __future__ import annotations

from pathlib import Path

SAMPLE_TOPICS = ["chains", "bees", "the river", "the workshop", "wind", "brakes", "saddles", "honey", "winter", "tools"]


def write_sample_notes(folder: Path, count: int = len(SAMPLE_TOPICS), start: int = 0) -> list[Path]:
    """Markdown notes `note-<i>.md` of one to four paragraphs, half with front matter."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(start, start + count):
        topic = SAMPLE_TOPICS[i % len(SAMPLE_TOPICS)]
        body = "\n\n".join(
            f"Here is the thing about {topic} (note {i}): paragraph {p} says something true enough. "
            + f"Small tools, small wins, and {topic} teach patience. " * 3
            for p in range(1 + i % 4)
        )
        front = f"---\ntitle: On {topic}\ntags: [workshop]\n---\n" if i % 2 == 0 else ""
        path = folder / f"note-{i:02d}.md"
        path.write_text(front + f"# On {topic}\n\n{body}\n", encoding="utf-8")
        written.append(path)
    return written
