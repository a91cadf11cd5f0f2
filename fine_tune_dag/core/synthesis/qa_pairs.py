"""Synthetic Q&A pairs from passages: prompts, a forgiving parser, and filters that say why.

Two modes: `grounded` (questions the passage answers, answers in the author's words) and
`back_translation` (the model writes the question; the verbatim passage is the answer).
Rejected pairs are kept with their reason so the rejection rate can be reported.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Iterable

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.common.text_metrics import content_words, repeated_trigram_share, rouge_l_f1, support, words
from fine_tune_dag.core.synthesis.chunking import Passage
from fine_tune_dag.core.synthesis.dedup import QUESTION_SHINGLE_WORDS, near_duplicates
from fine_tune_dag.prompts import load_prompt

TEMPLATES = {"grounded": load_prompt("grounded_qa"), "back_translation": load_prompt("back_translation")}
BACK_TRANSLATION_MAX_NEW_TOKENS = 48  # one instruction, never a paragraph

MODES = ("grounded", "back_translation")

_QUESTION_START = re.compile(r"^\W*(?:\d+\s*[.)]\s*)?(?:Q|Question)\s*\d*\s*[:.)\-]\s*(.*)$", re.IGNORECASE)
_ANSWER_START = re.compile(r"^\W*(?:A|Answer)\s*\d*\s*[:.)\-]\s*(.*)$", re.IGNORECASE)
_INLINE_ANSWER = re.compile(r"\s+(?:A|Answer)\s*\d*\s*:\s*", re.IGNORECASE)
_META_REFERENCE = re.compile(
    r"\b(?:the|this)\s+(?:note|notes|text|passage|writing|excerpt|article|document|author|writer)\b", re.IGNORECASE
)
_FIRST_QUESTION = re.compile(r"[^.!?]*\?")
_INSTRUCTION_VERBS = frozenset(
    "describe explain tell write give list share compare summarise summarize say recall walk name show".split()
)
_LEADING_HEADINGS = re.compile(r"\A(?:#+[^\n]*\n\s*)+")
_LEADING_LABEL = re.compile(
    r"^\W*(?:\d+\s*[.)]\s*)?(?:(?:question|instruction|request|q)\s*\d*\s*[:.\-]\s*)?", re.IGNORECASE
)


@dataclass(frozen=True)
class SynthesisSettings:
    questions_per_passage: int = field(default=2, metadata={"help": "questions asked of the LLM for each passage"})
    modes: tuple[str, ...] = field(
        default=MODES,
        metadata={
            "help": "'grounded' (Q&A from the passage) and/or 'back_translation' (an instruction the passage answers)"
        },
    )
    min_support: float = field(default=0.7, metadata={"help": "share of answer words that must occur in the passage"})
    min_new_answer_words: int = field(
        default=2, metadata={"help": "an answer must say at least this many words beyond the question"}
    )
    max_repetition: float = field(
        default=0.3, metadata={"help": "largest share of repeated word trigrams in an answer"}
    )
    min_question_words: int = field(default=3, metadata={"help": "shorter questions are rejected"})
    max_question_words: int = field(default=60, metadata={"help": "longer questions are rejected"})
    max_answer_words: int = field(default=300, metadata={"help": "longer answers are rejected"})
    duplicate_rouge_l: float = field(
        default=0.7, metadata={"help": "a question this close (ROUGE-L) to a kept one is a duplicate"}
    )
    max_new_tokens: int = field(default=120, metadata={"help": "LLM answer length per synthesis request"})
    near_duplicate_questions: float = field(
        default=0.7,
        metadata={
            "help": "MinHash estimate of word Jaccard at which a question repeats an earlier kept one of the same "
            "note (1.0: only identical word sets)"
        },
    )
    judge_min_score: int = field(
        default=4, metadata={"help": "with the judge on: kept pairs it scores below this (1-5) are rejected"}
    )

    def __post_init__(self) -> None:
        unknown = set(self.modes) - set(MODES)
        if not self.modes:
            raise ValueError(f"synthesis needs at least one mode of {MODES}")
        if unknown:
            raise ValueError(f"unknown synthesis modes {sorted(unknown)}; choose from {MODES}")
        if not 1 <= self.judge_min_score <= 5:
            raise ValueError(f"judge_min_score must be 1-5, got {self.judge_min_score}")


@dataclass(frozen=True)
class QAPair:
    pair_id: str
    note_id: str
    passage_index: int
    mode: str
    question: str
    answer: str
    status: str = "kept"  # or "rejected"
    reason: str | None = None
    support: float = 0.0
    judge_score: int | None = None  # 1-5 when the judge saw the pair (core.synthesis.pair_judge)
    judge_reason: str | None = None


def _clean(text: str) -> str:
    return " ".join(text.replace("**", "").replace("__", "").split()).strip(" \"'`")


def _from_json(output: str) -> list[tuple[str, str]] | None:
    start = min((i for i in (output.find("["), output.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        data = json.loads(output[start : max(output.rfind("]"), output.rfind("}")) + 1])
    except json.JSONDecodeError:
        return None
    items = data if isinstance(data, list) else data.get("pairs", data.get("questions", [data]))
    pairs = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            question = item.get("question") or item.get("q") or ""
            answer = item.get("answer") or item.get("a") or ""
            pairs.append((_clean(str(question)), _clean(str(answer))))
    return pairs


def parse_qa_pairs(output: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from JSON, `Q:`/`A:` blocks, numbered lists or inline `Q: … A: …`."""
    from_json = _from_json(output)
    if from_json:
        return from_json
    pairs: list[list[str]] = []
    field = None
    for raw_line in output.splitlines():
        line = raw_line.replace("**", "").strip()
        if not line:
            continue
        question = _QUESTION_START.match(line)
        answer = _ANSWER_START.match(line)
        if question:
            parts = _INLINE_ANSWER.split(question.group(1), maxsplit=1)
            pairs.append([parts[0], parts[1] if len(parts) > 1 else ""])
            field = 1 if len(parts) > 1 else 0
        elif answer and pairs:
            pairs[-1][1] = answer.group(1)
            field = 1
        elif pairs and field is not None:
            pairs[-1][field] += " " + line
    return [(_clean(q), _clean(a)) for q, a in pairs]


def parse_instruction(output: str) -> str:
    """The first question of the first non-empty line, or the line itself when it is an instruction
    ("Describe …"); chatter around it is dropped and anything else yields "" (rejected as empty)."""
    for line in output.splitlines():
        cleaned = _clean(_LEADING_LABEL.sub("", line.replace("**", "").strip()))
        if not cleaned:
            continue
        question = _FIRST_QUESTION.search(cleaned)
        if question:
            return question.group().strip()
        first_word = words(cleaned)[:1]
        return cleaned if first_word and first_word[0] in _INSTRUCTION_VERBS else ""
    return ""


def answer_text(passage: Passage) -> str:
    """The passage without its leading heading lines: still the author's verbatim words."""
    return _LEADING_HEADINGS.sub("", passage.text) or passage.text


def pair_id(note_id: str, passage_index: int, mode: str, ordinal: int, question: str) -> str:
    """Unique per candidate (the ordinal tells apart a question the model repeated)."""
    key = "\x1f".join([note_id, str(passage_index), mode, str(ordinal), question])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def candidate_pairs(passage: Passage, mode: str, output: str, limit: int) -> list[QAPair]:
    """Unfiltered pairs for one model answer, at most `limit` (small models loop); back-translation
    pairs answer with the passage itself."""
    if mode == "grounded":
        raw = parse_qa_pairs(output)[:limit] or [("", "")]
    else:
        raw = [(parse_instruction(output), answer_text(passage))]
    return [
        QAPair(pair_id(passage.note_id, passage.index, mode, n, q), passage.note_id, passage.index, mode, q, a)
        for n, (q, a) in enumerate(raw)
    ]


def rejection_reason(
    pair: QAPair, passage_text: str, kept_questions: list[str], settings: SynthesisSettings
) -> str | None:
    """Why a pair must not reach the training set, or None when it may."""
    if not pair.question or not pair.answer:
        return "empty question or answer"
    question_words = len(words(pair.question))
    if not settings.min_question_words <= question_words <= settings.max_question_words:
        return (
            f"question has {question_words} words (allowed {settings.min_question_words}-{settings.max_question_words})"
        )
    if len(words(pair.answer)) > settings.max_answer_words:
        return f"answer longer than {settings.max_answer_words} words"
    if rouge_l_f1(pair.question, pair.answer) > settings.duplicate_rouge_l:
        return "question copies the answer"
    if _META_REFERENCE.search(pair.question) or (pair.mode == "grounded" and _META_REFERENCE.search(pair.answer)):
        return "refers to the note or text instead of its subject"
    generated = pair.question if pair.mode == "back_translation" else f"{pair.question} {pair.answer}"
    if repeated_trigram_share(generated) > settings.max_repetition:
        return "repetitive output"
    if support(pair.answer, passage_text) < settings.min_support:
        return f"answer not supported by the passage (overlap below {settings.min_support:.2f})"
    new_words = set(content_words(pair.answer)) - set(content_words(pair.question))
    if len(new_words) < settings.min_new_answer_words:
        return "answer only restates the question"
    for earlier in kept_questions:
        if rouge_l_f1(pair.question, earlier) > settings.duplicate_rouge_l:
            return "duplicate question"
    return None


NEAR_DUPLICATE_QUESTION = "near-duplicate question (MinHash)"


def filter_pairs(candidates: Iterable[tuple[QAPair, Passage]], settings: SynthesisSettings) -> list[QAPair]:
    """Mark each candidate kept or rejected with a reason; duplicates are judged within one note, first by
    ROUGE-L against each kept question, then by MinHash over the kept questions (the first of a group stays)."""
    kept_questions: list[str] = []
    result = []
    for pair, passage in candidates:
        reason = rejection_reason(pair, passage.text, kept_questions, settings)
        score = support(pair.answer, passage.text)
        if reason is None:
            kept_questions.append(pair.question)
            result.append(replace(pair, support=score))
        else:
            result.append(replace(pair, status="rejected", reason=reason, support=score))
    kept = [position for position, pair in enumerate(result) if pair.status == "kept"]
    repeats = near_duplicates(
        [result[position].question for position in kept], settings.near_duplicate_questions, QUESTION_SHINGLE_WORDS
    )
    for repeat in repeats:
        result[kept[repeat]] = replace(result[kept[repeat]], status="rejected", reason=NEAR_DUPLICATE_QUESTION)
    return result


def synthesis_request(passage: Passage, mode: str, settings: SynthesisSettings) -> LLMRequest:
    """One passage's request, tagged with its note so the note's requests share placeholders (core/privacy)."""
    if mode == "grounded":
        return LLMRequest.from_template(
            TEMPLATES[mode],
            settings.max_new_tokens,
            note=passage.note_id,
            passage=passage.text,
            count=str(settings.questions_per_passage),
        )
    return LLMRequest.from_template(
        TEMPLATES[mode], BACK_TRANSLATION_MAX_NEW_TOKENS, note=passage.note_id, passage=passage.text
    )
