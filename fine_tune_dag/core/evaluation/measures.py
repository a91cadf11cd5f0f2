"""Held-out evaluation of several contenders on the same test items: answer NLL and perplexity by
teacher forcing; ROUGE-L, token F1, unsupported-content share and length of greedy generations; the
style distance of the generations to the author's own held-out writing; paired win rates with
bootstrap intervals.

A contender is the one loaded model asked in one way: the base model zero-shot or with a long
few-shot prompt (adapters off), or a named adapter (the champion, the newcomer)."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from peft import PeftModel

from fine_tune_dag.core.common.chat import Message, render_prompt_ids, render_training_example
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.common.statistics import Interval, clustered_mean, win_rate
from fine_tune_dag.core.common.text_metrics import rouge_l_f1, style_distance, token_f1, unsupported_share, words
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.generation.base import GenerationEngine
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.memory_budget import (
    MemoryBudget,
    ModelShape,
    available_bytes,
    fitting_rows,
    reading_bytes,
    resolve_memory_budget,
)
from fine_tune_dag.core.retrieval.index import PassageIndex
from fine_tune_dag.core.retrieval.prompt import cited_notes, retrieval_messages
from fine_tune_dag.core.training.loop import answer_token_losses, collate
from fine_tune_dag.prompts import load_prompt


@torch.inference_mode()
def answer_nll(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    batch_size: int,
    memory_budget: MemoryBudget | None = None,
) -> pd.DataFrame:
    """Summed NLL and token count of each reference answer (with its EOS) given its prompt.

    Batches are cut from the items sorted by length: in input order, padding to each batch's longest item
    about doubles the positions computed on test sets whose answers run from a sentence to a passage. With
    `memory_budget`, fewer items go in a batch where `batch_size` of the longest would not fit."""
    device = next(model.parameters()).device
    examples = [render_training_example(tokenizer, messages) for messages in conversations]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    rows: list[dict[str, float]] = [{}] * len(examples)
    if memory_budget is not None and examples:
        shape, longest = ModelShape.of(model.config), len(examples[order[-1]].input_ids)
        batch_size = fitting_rows(
            batch_size,
            lambda count: reading_bytes(shape, count, longest, model.dtype.itemsize),
            available_bytes(memory_budget),
        )
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in chosen], tokenizer.pad_token_id).items()}
        nll, count, _ = answer_token_losses(model, batch)
        for i, a, b in zip(chosen, nll, count):
            rows[i] = {"nll_sum": float(a), "answer_tokens": int(b)}
    return pd.DataFrame(rows, columns=["nll_sum", "answer_tokens"])


BEST_PROMPT_INSTRUCTION = (
    "You are the author of these notes. Answer in your own voice, from what you have written: first person, "
    "plain words, the same sentences as in the examples of your writing. Say only what your notes say."
)


@dataclass(frozen=True)
class Contender:
    """One way of asking: a model (the base or a named adapter) and the conversations it is asked in.

    `conversations` are the Q&A items; `voice` the writing tasks whose answers are the author's held-out
    passages; `writes` whether it also writes notes for the authorship, loop and memorization checks;
    `cited` the notes retrieval put in context for each Q&A item (empty without retrieval)."""

    name: str
    adapter: str | None  # a named adapter of the PeftModel; None switches adapters off (the base model)
    conversations: Sequence[Sequence[Message]]  # system, user, assistant — how this contender is asked
    voice: Sequence[Sequence[Message]] = ()
    writes: bool = False
    cited: Sequence[Sequence[str]] = ()


def pick_examples(
    pairs: Sequence[tuple[str, str]], count: int = 4, seed: int = 0, max_words: int = 60
) -> list[tuple[str, str]]:
    """A seeded handful of short train pairs to show the base model what an answer looks like."""
    short = sorted(p for p in pairs if len(words(p[1])) <= max_words)
    return [short[i] for i in sorted(random.Random(seed).sample(range(len(short)), min(count, len(short))))]


def best_prompt_conversations(
    conversations: Sequence[Sequence[Message]], examples: Sequence[tuple[str, str]]
) -> list[list[Message]]:
    """The base model's strongest fair shot: a long instruction and worked examples from the train split."""
    shots = [
        turn
        for question, answer in examples
        for turn in ({"role": "user", "content": question}, {"role": "assistant", "content": answer})
    ]
    return [[{"role": "system", "content": BEST_PROMPT_INSTRUCTION}, *shots, *c[1:]] for c in conversations]


def retrieval_conversations(
    conversations: Sequence[Sequence[Message]],
    index: PassageIndex,
    top_k: int,
    exclude_notes: Sequence[str] = (),
) -> tuple[list[list[Message]], list[list[str]]]:
    """Each conversation with the passages retrieval finds for its question in context, and the notes cited.

    `exclude_notes` (one per conversation) keeps a writing task from retrieving the very passage it is
    scored on: voice is measured on what the model writes, not on what it copies."""
    asked, cited = [], []
    for position, messages in enumerate(conversations):
        system, question, answer = messages[0]["content"], messages[-2]["content"], messages[-1]["content"]
        excluded = [exclude_notes[position]] if exclude_notes else []
        found = index.search(question, top_k, exclude_notes=excluded)
        asked.append(retrieval_messages(system, question, found, answer))
        cited.append(cited_notes(found))
    return asked, cited


@contextmanager
def contender_weights(model: PeftModel, adapter: str | None) -> Iterator[None]:
    """The base model (adapters off) or one named adapter, for the duration of a contender's work."""
    if adapter is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield


def voice_scores(
    model: PeftModel, tokenizer: Any, contenders: Sequence[Contender], settings: EvaluationSettings
) -> dict[str, pd.DataFrame]:
    """Per held-out passage and contender: the summed NLL and token count of the author's own words."""
    scores = {}
    for contender in contenders:
        with contender_weights(model, contender.adapter):
            scores[contender.name] = answer_nll(
                model,
                tokenizer,
                list(contender.voice)[: settings.max_voice_items],
                settings.batch_size,
                resolve_memory_budget(settings.memory_budget_gb),
            )
    return scores


def written_notes(
    model: PeftModel,
    tokenizer: Any,
    contenders: Sequence[Contender],
    settings: EvaluationSettings,
    generation: GenerationSettings,
    engine: GenerationEngine | None = None,
) -> dict[str, list[str]]:
    """What each writing contender writes on the first `max_written_notes` voice prompts, sampled with the
    generation defaults a user gets (the same seed for every contender); by `engine` where given."""
    notes = {}
    for contender in contenders:
        if not contender.writes:
            continue
        with contender_weights(model, contender.adapter):
            notes[contender.name] = write_notes(
                engine or model,
                tokenizer,
                list(contender.voice)[: settings.max_written_notes],
                settings,
                generation,
                contender.adapter,
            )
    return notes


WRITTEN_MARGIN_TOKENS = 16  # about a sentence: a note a little longer than its reference is not cut off


def write_notes(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    settings: EvaluationSettings,
    generation: GenerationSettings,
    adapter: str | None = None,
) -> list[str]:
    """The model's writing on each conversation's prompt (its last turn, the reference, is left out), each
    allowed as many tokens as its reference and `WRITTEN_MARGIN_TOKENS` more: one limit for all would cut long
    passages' counterparts short and let short ones run on, so length alone would tell the author's apart."""
    prompts = [render_prompt_ids(tokenizer, messages[:-1]) for messages in conversations]
    answers = [messages[-1]["content"] for messages in conversations]
    references = [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in answers]
    limits = [min(len(ids) + WRITTEN_MARGIN_TOKENS, settings.written_max_new_tokens) for ids in references]
    return generate_batch(
        model,
        tokenizer,
        prompts,
        limits,
        temperature=generation.temperature,
        top_p=generation.top_p,
        batch_size=settings.batch_size,
        seed=generation.seed,
        no_repeat_ngram_size=generation.no_repeat_ngram_size,
        memory_budget=resolve_memory_budget(settings.memory_budget_gb),
        adapter=adapter,
    )


def evaluate_contender(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    settings: EvaluationSettings,
    sources: Sequence[str],
    notes: Sequence[str],
    on_progress: Callable[[int], None] | None = None,
    cited: Sequence[Sequence[str]] = (),
    engine: GenerationEngine | None = None,
    adapter: str | None = None,
) -> pd.DataFrame:
    """Per item: question, reference, NLL, generation, overlap with the reference, unsupported share, the note
    it was drawn from (what intervals resample) and the notes retrieval cited (empty without retrieval).

    `attrs["seconds"]` says where the time went ({"nll": …, "generation": …}), so a slow evaluation can be
    traced to a contender and a stage."""
    budget = resolve_memory_budget(settings.memory_budget_gb)
    started = time.perf_counter()
    scores = answer_nll(model, tokenizer, conversations, settings.batch_size, budget)
    scored = time.perf_counter()
    prompts = [render_prompt_ids(tokenizer, messages[:-1]) for messages in conversations]
    generations = generate_batch(
        engine or model,
        tokenizer,
        prompts,
        settings.max_new_tokens,
        batch_size=settings.batch_size,
        on_batch=on_progress,
        no_repeat_ngram_size=GenerationSettings.no_repeat_ngram_size,
        memory_budget=budget,
        adapter=adapter,
    )
    seconds = {"nll": scored - started, "generation": time.perf_counter() - scored}
    references = [messages[-1]["content"] for messages in conversations]
    cited = list(cited)[: len(conversations)] if cited else [[] for _ in conversations]
    per_item = scores.assign(
        question=[messages[-2]["content"] for messages in conversations],
        reference=references,
        generation=generations,
        rouge_l=[rouge_l_f1(g, r) for g, r in zip(generations, references)],
        token_f1=[token_f1(g, r) for g, r in zip(generations, references)],
        unsupported=[unsupported_share(g, source) for g, source in zip(generations, sources)],
        words=[len(words(g)) for g in generations],
        source=list(sources),
        note=list(notes),
        cited=cited,
    )
    per_item.attrs["seconds"] = seconds
    return per_item


def summarize(per_item: pd.DataFrame) -> dict[str, float]:
    """Token-weighted mean NLL (so long answers count per token), its perplexity, mean overlaps, and
    the style distance of all generations to the author's held-out passages. All NaN without Q&A items
    (a small corpus whose test notes kept no pairs is still judged on voice)."""
    if per_item.empty:
        return dict.fromkeys(
            ["nll", "perplexity", "rouge_l", "token_f1", "unsupported", "style_distance", "words"], math.nan
        )
    mean_nll = per_item["nll_sum"].sum() / max(per_item["answer_tokens"].sum(), 1)
    return {
        "nll": float(mean_nll),
        "perplexity": float(math.exp(min(mean_nll, 50.0))),
        "rouge_l": float(per_item["rouge_l"].mean()),
        "token_f1": float(per_item["token_f1"].mean()),
        "unsupported": float(per_item["unsupported"].mean()),
        "style_distance": style_distance(per_item["generation"].tolist(), sorted(set(per_item["source"]))),
        "words": float(per_item["words"].mean()),
    }


def win_rates(results: dict[str, pd.DataFrame], challenger: str, seed: int = 0) -> list[tuple[str, str, Interval]]:
    """The challenger against every other contender, item by item: on answer likelihood (per-token NLL,
    lower wins) and on overlap with the reference (mean of ROUGE-L and token F1, higher wins); intervals
    resample notes."""
    mine = results[challenger]
    rows = []
    for name, other in results.items():
        if name == challenger:
            continue
        rows.append(
            (
                name,
                "answer likelihood",
                win_rate(_per_token(mine), _per_token(other), mine["note"], higher_is_better=False, seed=seed),
            )
        )
        rows.append((name, "overlap", win_rate(_overlap(mine), _overlap(other), mine["note"], seed=seed)))
    return rows


JUDGE_TEMPLATE = load_prompt("pairwise_judge")
_VERDICT = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


def judge_requests(
    mine: pd.DataFrame, other: pd.DataFrame, seed: int, max_new_tokens: int = 4
) -> tuple[list[LLMRequest], list[bool]]:
    """One pairwise question per item; the challenger's answer is A or B at random (seeded), so the
    judge's preference for a position cannot pass for a preference for a model."""
    rng = random.Random(seed)
    flipped = [rng.random() < 0.5 for _ in range(len(mine))]
    requests = [
        LLMRequest.from_template(
            JUDGE_TEMPLATE,
            max_new_tokens,
            question=question,
            reference=reference,
            answer_a=theirs if flip else own,
            answer_b=own if flip else theirs,
        )
        for question, reference, own, theirs, flip in zip(
            mine["question"], mine["reference"], mine["generation"], other["generation"], flipped
        )
    ]
    return requests, flipped


def verdict_choice(verdict: str, flipped: bool) -> float | None:
    """1 when the judge preferred the first side of a `judge_requests` pair, 0 the other, 0.5 a tie;
    None when the verdict cannot be read."""
    match = _VERDICT.search(verdict)
    if match is None:
        return None
    choice = match.group(1).upper()
    return 0.5 if choice == "TIE" else float((choice == "A") != flipped)


def judged_outcomes(
    verdicts: Sequence[str], flipped: Sequence[bool], notes: Sequence[str]
) -> tuple[list[float], list[str]]:
    """1 when the challenger's answer was preferred, 0.5 for a tie, with each item's note; unreadable verdicts
    are left out."""
    read = [(verdict_choice(v, flip), note) for v, flip, note in zip(verdicts, flipped, notes)]
    kept = [(outcome, note) for outcome, note in read if outcome is not None]
    return [outcome for outcome, _ in kept], [note for _, note in kept]


def judged_win_rates(
    results: dict[str, pd.DataFrame],
    challenger: str,
    complete: Callable[[list[LLMRequest]], list[str]],
    seed: int = 0,
) -> list[tuple[str, str, Interval]]:
    """The challenger against every other contender as an LLM judge sees it, with bootstrap intervals."""
    rows = []
    for name, other in results.items():
        if name == challenger:
            continue
        requests, flipped = judge_requests(results[challenger], other, seed)
        outcomes, notes = judged_outcomes(complete(requests), flipped, other["note"])
        rows.append((name, "LLM judge", clustered_mean(outcomes, notes, seed=seed)))
    return rows


def _per_token(frame: pd.DataFrame) -> list[float]:
    return (frame["nll_sum"] / frame["answer_tokens"].clip(lower=1)).tolist()


def _overlap(frame: pd.DataFrame) -> list[float]:
    return ((frame["rouge_l"] + frame["token_f1"]) / 2).tolist()


def compare_contenders(
    model: PeftModel,
    tokenizer: Any,
    contenders: Sequence[Contender],
    sources: Sequence[str],
    notes: Sequence[str],
    settings: EvaluationSettings,
    on_progress: Callable[[str, int], None] | None = None,
    engine: GenerationEngine | None = None,
) -> dict[str, pd.DataFrame]:
    """Every contender from one loaded model (its answers by `engine` where given), on the same first
    `max_examples` items."""
    chosen_sources = list(sources)[: settings.max_examples]
    chosen_notes = list(notes)[: settings.max_examples]
    results = {}
    for contender in contenders:
        chosen = list(contender.conversations)[: settings.max_examples]
        report = partial(on_progress, contender.name) if on_progress else None
        with contender_weights(model, contender.adapter):
            results[contender.name] = evaluate_contender(
                model,
                tokenizer,
                chosen,
                settings,
                chosen_sources,
                chosen_notes,
                report,
                contender.cited,
                engine,
                contender.adapter,
            )
    return results
