"""Single-topic passages that are exact character spans of their note.

The author's words are the training signal, so chunking only chooses boundaries: the LLM answers
with paragraph numbers and topic labels, never with text, and every passage satisfies
`note_text[start:end] == passage.text`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.prompts import load_prompt

BOUNDARY_TEMPLATE = load_prompt("chunk_boundaries")
BOUNDARY_MAX_NEW_TOKENS = 128

_BLOCK = re.compile(r"(?:[^\n]|\n(?![ \t]*\n))+")
_SENTENCE = re.compile(r".+?(?:[.!?]+[\"')\]]*(?=\s)|$)", re.DOTALL)
_BOUNDARY_LINE = re.compile(r"^\W*(?:paragraph\s*|passage\s*)?(\d+)\s*(?:[|:.)\-–—]\s*(.*))?$", re.IGNORECASE)
_PROMPT_PARAGRAPH_CHARS = 240


@dataclass(frozen=True)
class ChunkingSettings:
    strategy: str = field(
        default="llm",
        metadata={"help": "'llm' (the model proposes boundaries) or 'heuristic' (headings and paragraphs)"},
    )
    min_chars: int = field(default=200, metadata={"help": "passages shorter than this merge with a neighbour"})
    max_chars: int = field(default=1200, metadata={"help": "passages longer than this are split"})
    window_paragraphs: int = field(
        default=60,
        metadata={
            "help": "paragraphs per boundary request: a long note (a mailbox, a chat export, a book) is asked about "
            "in windows of this many, one request each, so every prompt fits a small model's context"
        },
    )

    def __post_init__(self) -> None:
        if self.strategy not in ("llm", "heuristic"):
            raise ValueError(f"unknown chunking strategy '{self.strategy}': use 'llm' or 'heuristic'")
        if not 0 < self.min_chars < self.max_chars:
            raise ValueError("chunking needs 0 < min_chars < max_chars")
        if self.window_paragraphs < 2:
            raise ValueError("chunking needs window_paragraphs >= 2")


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    is_heading: bool


@dataclass(frozen=True)
class Passage:
    note_id: str
    index: int
    start: int
    end: int
    text: str
    topic: str
    strategy: str


@dataclass(frozen=True)
class ChunkingResult:
    passages: list[Passage]
    strategy: str  # what actually produced the boundaries: "whole", "llm" or "heuristic"
    fallback_reason: str | None = None


class ChunkingOutputError(ValueError):
    """The model's boundary answer is unusable; the reason is recorded when falling back."""


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def paragraph_units(text: str) -> list[Unit]:
    """Blank-line separated paragraphs; a Markdown heading line is a unit of its own."""
    units: list[Unit] = []
    for block in _BLOCK.finditer(text):
        position = block.start()
        for line in block.group().split("\n"):
            line_start, line_end = position, position + len(line)
            position = line_end + 1
            start, end = _stripped(text, line_start, line_end)
            if start == end:
                continue
            heading = text[start] == "#"
            if units and not heading and not units[-1].is_heading and units[-1].end >= line_start - 1:
                units[-1] = Unit(units[-1].start, end, False)
            else:
                units.append(Unit(start, end, heading))
    return units


def _split_long(text: str, unit: Unit, max_chars: int) -> list[Unit]:
    """Sentences of an over-long paragraph; a sentence still too long is cut at whitespace."""
    pieces: list[Unit] = []
    for sentence in _SENTENCE.finditer(text, unit.start, unit.end):
        start, end = _stripped(text, sentence.start(), min(sentence.end(), unit.end))
        while end - start > max_chars:
            cut = text.rfind(" ", start, start + max_chars)
            cut = cut if cut > start else start + max_chars
            pieces.append(Unit(start, cut, False))
            start, _ = _stripped(text, cut, end)
        if start < end:
            pieces.append(Unit(start, end, False))
    return pieces


def _bounded_units(text: str, max_chars: int) -> list[Unit]:
    units: list[Unit] = []
    for unit in paragraph_units(text):
        units.extend(_split_long(text, unit, max_chars) if unit.end - unit.start > max_chars else [unit])
    return units


def _span(group: Sequence[Unit]) -> int:
    return group[-1].end - group[0].start


def _merge_small(groups: list[list[Unit]], min_chars: int, max_chars: int) -> list[list[Unit]]:
    """Fold each passage under `min_chars` into its smaller neighbour while the result fits `max_chars`."""
    merged = [list(group) for group in groups]
    stuck: set[int] = set()
    while True:
        small = [i for i, g in enumerate(merged) if _span(g) < min_chars and id(g[0]) not in stuck]
        if not small:
            return merged
        i = min(small, key=lambda k: _span(merged[k]))
        fits = [j for j in (i - 1, i + 1) if 0 <= j < len(merged)]
        fits = [j for j in fits if merged[max(i, j)][-1].end - merged[min(i, j)][0].start <= max_chars]
        if not fits:
            stuck.add(id(merged[i][0]))
            continue
        j = min(fits, key=lambda k: _span(merged[k]))
        low, high = min(i, j), max(i, j)
        merged[low : high + 1] = [merged[low] + merged[high]]


def _heading_text(text: str, unit: Unit) -> str:
    return text[unit.start : unit.end].lstrip("#").strip()


def _passages(
    note_id: str, text: str, groups: list[list[Unit]], topics: list[str], strategy: str | Sequence[str]
) -> list[Passage]:
    """One passage per group; `strategy` is what cut them all, or each one's."""
    strategies = [strategy] * len(groups) if isinstance(strategy, str) else strategy
    return [
        Passage(note_id, index, group[0].start, group[-1].end, text[group[0].start : group[-1].end], topic, cut_by)
        for index, (group, topic, cut_by) in enumerate(zip(groups, topics, strategies))
    ]


def _whole(note_id: str, text: str, title: str) -> ChunkingResult:
    start, end = _stripped(text, 0, len(text))
    return ChunkingResult([Passage(note_id, 0, start, end, text[start:end], title, "whole")], "whole")


def heuristic_passages(note_id: str, text: str, title: str, settings: ChunkingSettings) -> ChunkingResult:
    """Headings open a passage; paragraphs accumulate up to `max_chars`; tiny pieces are merged."""
    if len(text.strip()) <= settings.max_chars:
        return _whole(note_id, text, title)
    groups = _merge_small(
        _heuristic_groups(_bounded_units(text, settings.max_chars), settings), settings.min_chars, settings.max_chars
    )
    topics = []
    for group in groups:
        headings = [u for u in group if u.is_heading]
        topics.append(_heading_text(text, headings[0]) if headings else _nearest_heading(text, group[0], title))
    return ChunkingResult(_passages(note_id, text, groups, topics, "heuristic"), "heuristic")


def _heuristic_groups(units: Sequence[Unit], settings: ChunkingSettings) -> list[list[Unit]]:
    groups: list[list[Unit]] = []
    for unit in units:
        current = groups[-1] if groups else None
        opens_section = unit.is_heading and current is not None and not all(u.is_heading for u in current)
        too_long = current is not None and unit.end - current[0].start > settings.max_chars
        if current is None or opens_section or too_long:
            groups.append([unit])
        else:
            current.append(unit)
    return groups


def _nearest_heading(text: str, unit: Unit, title: str) -> str:
    before = [u for u in paragraph_units(text[: unit.start]) if u.is_heading]
    return _heading_text(text, before[-1]) if before else title


def needs_boundary_request(text: str, settings: ChunkingSettings) -> bool:
    """Short notes are kept whole and cost no LLM call."""
    return settings.strategy == "llm" and len(text.strip()) > settings.max_chars


def boundary_windows(text: str, settings: ChunkingSettings) -> list[list[Unit]]:
    """The note's paragraphs in windows of at most `window_paragraphs`, each asked about in its own request; a
    window ends before its last heading in its second half, so a message or chapter stays in one window."""
    units, windows = _bounded_units(text, settings.max_chars), []
    while units:
        size = min(settings.window_paragraphs, len(units))
        if size < len(units):
            headings = [i for i in range(size // 2, size) if units[i].is_heading]
            size = headings[-1] if headings else size
        windows.append(units[:size])
        units = units[size:]
    return windows


def boundary_requests(
    text: str, settings: ChunkingSettings, max_new_tokens: int, note: str = "", keep_whole: Sequence[str] = ()
) -> list[LLMRequest]:
    """The requests that ask the LLM where this note's topics change, one per window of paragraphs (`note`: the
    note they carry text of)."""
    return [
        LLMRequest.from_template(
            BOUNDARY_TEMPLATE,
            max_new_tokens,
            note=note,
            **boundary_prompt_variables(text, settings, keep_whole, window),
        )
        for window in boundary_windows(text, settings)
    ]


def boundary_prompt_variables(
    text: str, settings: ChunkingSettings, keep_whole: Sequence[str] = (), window: Sequence[Unit] | None = None
) -> dict[str, str]:
    """Numbered paragraphs (of `window`, else the whole note), each cut short in the prompt to keep it small; the
    note itself is untouched.

    A cut never splits one of `keep_whole` (the personal data found in the note): half a phone number or name
    would no longer be recognized, and would leave unredacted."""
    protected = [" ".join(value.split()) for value in keep_whole if value.strip()]
    lines = []
    for number, unit in enumerate(_bounded_units(text, settings.max_chars) if window is None else window, start=1):
        snippet = " ".join(text[unit.start : unit.end].split())
        if len(snippet) > _PROMPT_PARAGRAPH_CHARS:
            snippet = snippet[: _cut(snippet, protected)] + " …"
        lines.append(f"[{number}] {snippet}")
    return {"paragraphs": "\n".join(lines)}


def _cut(snippet: str, protected: Sequence[str]) -> int:
    """Where a long paragraph's snippet ends: at the last space within the limit, moved past any protected value
    the cut would split."""
    end = len(snippet[:_PROMPT_PARAGRAPH_CHARS].rsplit(" ", 1)[0])
    spans = [m.span() for value in protected for m in re.finditer(re.escape(value), snippet, re.IGNORECASE)]
    moved = True
    while moved:
        moved = False
        for start, stop in spans:
            if start < end < stop:
                end, moved = stop, True
    return end


def parse_boundaries(output: str, unit_count: int) -> list[tuple[int, str]]:
    """(first paragraph number, topic) per passage, or ChunkingOutputError saying what is wrong."""
    boundaries: list[tuple[int, str]] = []
    for line in output.splitlines():
        match = _BOUNDARY_LINE.match(line.strip())
        if match:
            boundaries.append((int(match.group(1)), (match.group(2) or "").strip(" *_`\"'")))
    if not boundaries:
        raise ChunkingOutputError("no 'number | topic' lines in the answer")
    numbers = [number for number, _ in boundaries]
    if numbers[0] != 1:
        raise ChunkingOutputError(f"first passage starts at paragraph {numbers[0]}, not 1")
    if any(b <= a for a, b in zip(numbers, numbers[1:])):
        raise ChunkingOutputError(f"paragraph numbers not strictly increasing: {numbers}")
    if numbers[-1] > unit_count:
        raise ChunkingOutputError(f"paragraph {numbers[-1]} does not exist (the note has {unit_count})")
    return boundaries


def passages_from_boundary_answers(
    note_id: str, text: str, title: str, outputs: Sequence[str], settings: ChunkingSettings
) -> ChunkingResult:
    """Validate the model's boundaries, one answer per window; a window whose answer is unusable is cut by headings
    and paragraphs instead, and the reason recorded."""
    windows = boundary_windows(text, settings)
    groups: list[list[Unit]] = []
    labelled: dict[int, str] = {}
    failures = []
    for number, (window, output) in enumerate(zip(windows, outputs), start=1):
        try:
            chosen = _boundary_groups(window, output, settings)
        except ChunkingOutputError as error:
            failures.append(f"window {number} of {len(windows)}: {error}" if len(windows) > 1 else str(error))
            groups += _heuristic_groups(window, settings)
            continue
        labelled |= {id(group[0]): topic or title for group, topic in chosen}
        groups += [group for group, _ in chosen]
    if len(failures) == len(windows):
        fallback = heuristic_passages(note_id, text, title, settings)
        return ChunkingResult(fallback.passages, fallback.strategy, "; ".join(failures))
    merged = _merge_small(groups, settings.min_chars, settings.max_chars)
    topics = [labelled.get(id(group[0]), _nearest_heading(text, group[0], title)) for group in merged]
    strategies = ["llm" if id(group[0]) in labelled else "heuristic" for group in merged]
    return ChunkingResult(_passages(note_id, text, merged, topics, strategies), "llm", "; ".join(failures) or None)


def _boundary_groups(window: Sequence[Unit], output: str, settings: ChunkingSettings) -> list[tuple[list[Unit], str]]:
    """The window's paragraphs grouped where the answer says, with each group's topic."""
    boundaries = parse_boundaries(output, len(window))
    starts = [number - 1 for number, _ in boundaries]
    groups = [list(window[a:b]) for a, b in zip(starts, starts[1:] + [len(window)])]
    for number, group in zip(starts, groups):
        if _span(group) > settings.max_chars:
            raise ChunkingOutputError(
                f"passage from paragraph {number + 1} is {_span(group)} chars, above max_chars {settings.max_chars}"
            )
    return [(group, topic) for group, (_, topic) in zip(groups, boundaries)]
