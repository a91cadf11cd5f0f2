"""The optional judge of synthetic pairs: the teacher scores each kept pair against its passage on a short rubric
(answerable from the passage, correct, in the author's words), and pairs below a threshold are rejected.

Word overlap alone keeps pairs like "Q: Does a bicycle chain stretch? A: A bicycle chain stretches.": the judge
reads the pair as a person would. Its score and reason are stored with every pair it saw; a verdict that cannot
be read leaves the pair as the other filters judged it (the judge only ever removes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.synthesis.qa_pairs import QAPair
from fine_tune_dag.prompts import load_prompt

JUDGE_TEMPLATE = load_prompt("pair_judge")
JUDGE_MAX_NEW_TOKENS = 40  # a score and a few words of reason
MAX_SCORE = 5
MAX_REASON_CHARS = 200
JUDGE_REJECTION = "judge scored"  # how a rejection by the judge begins
_SCORE = re.compile(r"\b(?:score|rating)\s*[:=\-]?\s*([1-5])\b", re.IGNORECASE)
_OUT_OF = re.compile(r"\b([1-5])\s*(?:/|out of)\s*5\b", re.IGNORECASE)
_LEADING_DIGIT = re.compile(r"^\W*([1-5])\b")
_REASON = re.compile(r"\breason\s*[:=\-]\s*(.+)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Judgement:
    score: int | None  # 1–5, None when the verdict could not be read
    reason: str


def judge_request(pair: QAPair, passage_text: str) -> LLMRequest:
    return LLMRequest.from_template(
        JUDGE_TEMPLATE, JUDGE_MAX_NEW_TOKENS, passage=passage_text, question=pair.question, answer=pair.answer
    )


def _from_json(output: str) -> Judgement | None:
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        data = json.loads(output[start : end + 1])
    except json.JSONDecodeError:
        return None
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= MAX_SCORE:
        return None
    return Judgement(score, " ".join(str(data.get("reason", "")).split())[:MAX_REASON_CHARS])


def parse_judgement(output: str) -> Judgement:
    """The score (1–5) and reason from JSON, `Score: 4` / `Reason: …` lines, `4/5`, or a leading digit; a score
    outside 1–5 or none at all reads as None, with the output kept (shortened) as the reason."""
    from_json = _from_json(output)
    if from_json is not None:
        return from_json
    output = output.replace("**", "")  # Markdown bold around labels
    match = _SCORE.search(output) or _OUT_OF.search(output) or _LEADING_DIGIT.search(output)
    reason_match = _REASON.search(output)
    reason = reason_match.group(1) if reason_match else (output[match.end() :] if match else output)
    reason = " ".join(reason.strip(" \n.-:").split())[:MAX_REASON_CHARS]
    return Judgement(int(match.group(1)) if match else None, reason)


def apply_judgements(pairs: Iterable[QAPair], judgements: Mapping[str, Judgement], min_score: int) -> list[QAPair]:
    """Each judged pair carries its score and reason; a kept pair scored below `min_score` is rejected."""
    result = []
    for pair in pairs:
        judgement = judgements.get(pair.pair_id)
        if judgement is None:
            result.append(pair)
            continue
        judged = replace(pair, judge_score=judgement.score, judge_reason=judgement.reason)
        if judgement.score is not None and judgement.score < min_score:
            judged = replace(
                judged, status="rejected", reason=f"{JUDGE_REJECTION} {judgement.score} (below {min_score})"
            )
        result.append(judged)
    return result
