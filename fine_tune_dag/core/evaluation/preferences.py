"""Preference data: two answers to one prompt from different sources, people's (and a judge's) choices
between them, and the chosen/rejected pairs DPO learns from.

Candidates store their answers as A and B with each answer's origin; the annotation page shows them in a
random order and records which one it put on the left, so neither a position nor a source can be learned
from the page. Every choice is its own row (who, when, what was on the left): nothing is overwritten, a
reload or a crash loses at most the click in flight, and the latest human choice on a comparison wins
over a judge's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, Message, chat_messages, render_prompt_ids
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.evaluation.config import PreferenceSettings
from fine_tune_dag.core.evaluation.measures import best_prompt_conversations, judge_requests, verdict_choice
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.store.labels import HUMAN, JUDGE, label_row

# Which two sources answer a prompt. Pairings are dealt to prompts in turn, so every kind is represented.
CHAMPION_VS_PROMPTED_BASE = "champion_vs_prompted_base"
CHAMPION_TEMPERATURES = "champion_temperatures"
AUTHOR_VS_CHAMPION = "author_vs_champion"
PAIRINGS = (CHAMPION_VS_PROMPTED_BASE, CHAMPION_TEMPERATURES, AUTHOR_VS_CHAMPION)


@dataclass(frozen=True)
class Prompt:
    """A question to ask both sources; `passage` is the author's own text it came from, when there is one."""

    prompt_id: str
    system: str
    question: str
    reference: str
    passage: str | None


def prompts_from_splits(train: pd.DataFrame, edge_cases: pd.DataFrame) -> list[Prompt]:
    """Train-split questions (with their passage when the pair was drawn from one) and the edge cases."""
    prompts = [
        Prompt(row.pair_id, row.system, row.question, row.answer, row.passage if isinstance(row.passage, str) else None)
        for row in train.itertuples(index=False)
    ]
    prompts += [
        Prompt(f"edge:{row.case_id}", DEFAULT_SYSTEM_PROMPT, row.question, row.reference or "", None)
        for row in edge_cases.itertuples(index=False)
    ]
    return prompts


def assign_pairings(prompts: Sequence[Prompt], count: int, seed: int) -> list[tuple[Prompt, str]]:
    """`count` prompts in a seeded order, each dealt the next pairing it can have (the author's passage
    needs a passage)."""
    order = sorted(prompts, key=lambda p: fingerprint([seed, p.prompt_id]))[:count]
    dealt = []
    for i, prompt in enumerate(order):
        pairing = PAIRINGS[i % len(PAIRINGS)]
        if pairing == AUTHOR_VS_CHAMPION and prompt.passage is None:
            pairing = PAIRINGS[(i + 1) % len(PAIRINGS)]
        dealt.append((prompt, pairing))
    return dealt


def generate_candidates(
    model: Any,
    tokenizer: Any,
    dealt: Sequence[tuple[Prompt, str]],
    champion_adapter: str,
    examples: Sequence[tuple[str, str]],
    settings: PreferenceSettings,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, str]]:
    """Both answers of every dealt prompt, from one engine (or loaded model): the champion adapter, the base
    model with the best prompt, or the author's passage. Returns rows for `preference_candidates`
    (without `champion_version` and `created_at`)."""
    jobs: dict[tuple[str, float], list[tuple[int, str]]] = {}  # (source, temperature) → (prompt index, slot)
    answers: list[dict[str, str]] = [{} for _ in dealt]
    for i, (prompt, pairing) in enumerate(dealt):
        if pairing == CHAMPION_VS_PROMPTED_BASE:
            jobs.setdefault(("champion", 0.0), []).append((i, "a"))
            jobs.setdefault(("prompted_base", 0.0), []).append((i, "b"))
        elif pairing == CHAMPION_TEMPERATURES:
            jobs.setdefault(("champion", settings.low_temperature), []).append((i, "a"))
            jobs.setdefault(("champion", settings.high_temperature), []).append((i, "b"))
        else:
            answers[i]["a"], answers[i]["origin_a"] = passage_as_answer(prompt.passage or ""), "author"
            jobs.setdefault(("champion", 0.0), []).append((i, "b"))
    for (source, temperature), slots in jobs.items():
        conversations = [chat_messages(dealt[i][0].system, dealt[i][0].question) for i, _ in slots]
        if source == "prompted_base":
            conversations = best_prompt_conversations(conversations, examples)
        prompt_ids = [render_prompt_ids(tokenizer, c) for c in conversations]
        adapter = champion_adapter if source == "champion" else None
        texts = _generate(model, tokenizer, prompt_ids, temperature, settings, on_batch, adapter)
        origin = source if temperature == 0 else f"{source}@t={temperature:g}"
        for (i, slot), text in zip(slots, texts):
            answers[i][slot], answers[i][f"origin_{slot}"] = text.strip(), origin
    rows = []
    for (prompt, pairing), answer in zip(dealt, answers):
        content = [prompt.prompt_id, answer["a"], answer["origin_a"], answer["b"], answer["origin_b"]]
        rows.append(
            {
                "candidate_id": fingerprint(content),
                "prompt_id": prompt.prompt_id,
                "system": prompt.system,
                "question": prompt.question,
                "reference": prompt.reference,
                "pairing": pairing,
                "answer_a": answer["a"],
                "origin_a": answer["origin_a"],
                "answer_b": answer["b"],
                "origin_b": answer["origin_b"],
            }
        )
    return rows


def passage_as_answer(passage: str) -> str:
    """The author's passage without its Markdown heading lines: an answer does not open with a title. The
    words are the author's, unchanged."""
    kept = [line for line in passage.splitlines() if not re.match(r"\s{0,3}#{1,6}\s", line)]
    return "\n".join(kept).strip()


def _generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    temperature: float,
    settings: PreferenceSettings,
    on_batch: Callable[[int], None] | None,
    adapter: str | None,
) -> list[str]:
    return generate_batch(
        model,
        tokenizer,
        prompt_ids,
        settings.max_new_tokens,
        temperature=temperature,
        batch_size=settings.batch_size,
        seed=settings.seed,
        on_batch=on_batch,
        adapter=adapter,
    )


def judge_prelabels(
    candidates: pd.DataFrame, complete: Callable[[list[LLMRequest]], list[str]], seed: int
) -> list[dict[str, Any]]:
    """Label rows from the pairwise judge (answers shown in a seeded random order); unreadable verdicts
    leave the comparison to people."""
    mine = candidates.rename(columns={"answer_a": "generation"})
    other = candidates.rename(columns={"answer_b": "generation"})
    requests, flipped = judge_requests(mine, other, seed)
    rows = []
    for candidate_id, verdict, flip in zip(candidates["candidate_id"], complete(requests), flipped):
        outcome = verdict_choice(verdict, flip)
        if outcome is None:
            continue
        choice = "tie" if outcome == 0.5 else ("a" if outcome == 1.0 else "b")
        rows.append(label_row(candidate_id, "llm-judge", JUDGE, choice, "b" if flip else "a"))
    return rows


def pairs_from_labels(candidates: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Chosen/rejected rows: the latest human choice on a comparison, else the judge's; ties and skips
    teach nothing and are left out. Returns the pairs and counts of where they came from."""
    ordered = labels.sort_values(["labeled_at", "label_id"])
    human = ordered[ordered["source"] == HUMAN].drop_duplicates("candidate_id", keep="last").set_index("candidate_id")
    judged = ordered[ordered["source"] == JUDGE].drop_duplicates("candidate_id", keep="last").set_index("candidate_id")
    rows, counts = [], {"human": 0, "judge": 0, "overruled_judge": 0, "tie_or_skip": 0, "unlabeled": 0}
    for candidate in candidates.itertuples(index=False):
        key = candidate.candidate_id
        label = human.loc[key] if key in human.index else judged.loc[key] if key in judged.index else None
        if label is None:
            counts["unlabeled"] += 1
            continue
        if label.source == HUMAN and key in judged.index and judged.loc[key].choice != label.choice:
            counts["overruled_judge"] += 1
        if label.choice not in ("a", "b"):
            counts["tie_or_skip"] += 1
            continue
        counts[label.source] += 1
        chosen, rejected = ("a", "b") if label.choice == "a" else ("b", "a")
        rows.append(
            {
                "candidate_id": key,
                "system": candidate.system,
                "question": candidate.question,
                "chosen": getattr(candidate, f"answer_{chosen}"),
                "rejected": getattr(candidate, f"answer_{rejected}"),
                "chosen_origin": getattr(candidate, f"origin_{chosen}"),
                "rejected_origin": getattr(candidate, f"origin_{rejected}"),
                "label_source": label.source,
                "labeler": label.labeler,
                "labeled_at": label.labeled_at,
            }
        )
    columns = [
        "candidate_id",
        "system",
        "question",
        "chosen",
        "rejected",
        "chosen_origin",
        "rejected_origin",
        "label_source",
        "labeler",
        "labeled_at",
    ]
    return pd.DataFrame(rows, columns=columns), counts


def pair_conversations(pairs: pd.DataFrame) -> list[tuple[list[Message], list[Message]]]:
    """(chosen, rejected) conversations of each pair, for the one chat renderer."""
    return [
        (chat_messages(p.system, p.question, p.chosen), chat_messages(p.system, p.question, p.rejected))
        for p in pairs.itertuples(index=False)
    ]
