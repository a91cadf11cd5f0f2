"""Evaluation: answer NLL batched against one item at a time, and the eval_report model work timed by contender.

Test items are made as the graph makes them, from the sample notes: heuristic passages, question
synthesis answered by the scripted LLM, the synthesis filters, the default system prompt (reused in turn
when there are fewer than `--items`). The model is the bundled one in the dtype the assets pick.

(a) `answer_nll` over the items with batch size 16 and with batch size 1: items/s, and how far the two
    NLLs are apart.
(b) What eval_report does with the model: `compare_contenders` on base (zero-shot), base with the best
    prompt, a champion adapter and a new adapter (each trained for two steps here), then the summaries and
    win rates; seconds by contender and stage, on all `--items`. Batched against one item at a time is measured
    on `--sample` evenly spread items: both sides run the same contenders on those same items, in turn contender
    by contender (nothing is extrapolated). The few-shot examples come from the same items: this times the
    work, it does not judge the contenders.

    python bench/evaluation.py --items 200 [--max-new-tokens 96] [--json rows.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from itertools import cycle, groupby, islice
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from fine_tune_dag_testkit.scripted import ScriptedLLM
from generation import add_model_arguments, load_model, sample_passages
from peft import PeftModel
from results import Row, add_json_argument, machine, peak_rss_mib, report

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, Message, chat_messages, render_training_example
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.measures import (
    Contender,
    answer_nll,
    best_prompt_conversations,
    compare_contenders,
    pick_examples,
    summarize,
    win_rates,
)
from fine_tune_dag.core.models.loading import with_adapters
from fine_tune_dag.core.synthesis.qa_pairs import (
    MODES,
    SynthesisSettings,
    candidate_pairs,
    filter_pairs,
    synthesis_request,
)
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora


def eval_items(notes_dir: Path, count: int) -> tuple[list[list[Message]], list[str]]:
    """`count` conversations (system, question, answer) and the passage each answer came from."""
    settings = SynthesisSettings()
    jobs = [(passage, mode) for passage in sample_passages(notes_dir) for mode in MODES]
    answers = ScriptedLLM().complete([synthesis_request(p, mode, settings) for p, mode in jobs])
    candidates = [
        (pair, passage)
        for (passage, mode), answer in zip(jobs, answers)
        for pair in candidate_pairs(passage, mode, answer.text, settings.questions_per_passage)
    ]
    kept = []
    for _, group in groupby(candidates, key=lambda c: c[1].note_id):  # duplicates are judged within a note
        note = list(group)
        kept += [
            (pair, passage) for pair, (_, passage) in zip(filter_pairs(note, settings), note) if pair.status == "kept"
        ]
    chosen = list(islice(cycle(kept), count))
    return [chat_messages(DEFAULT_SYSTEM_PROMPT, p.question, p.answer) for p, _ in chosen], [s.text for _, s in chosen]


def trained_adapters(
    model_path: Path, tokenizer: Any, conversations: Sequence[Sequence[Message]], folder: Path
) -> dict[str, Path]:
    """A champion and a newcomer, two optimizer steps each on different seeds (on the shortest items, to be
    quick): enough to differ from the base and from each other, and to run as eval_report runs adapters."""
    shortest = sorted(conversations, key=lambda c: len(render_training_example(tokenizer, c).input_ids))[:8]
    adapters = {}
    for name, seed in (("champion", 1), ("tuned", 2)):
        settings = TrainingSettings(max_steps=2, batch_size=2, eval_fraction=0.0, checkpoint_steps=0, seed=seed)
        adapters[name] = save_adapter(train_lora(model_path, shortest, settings), folder, name, {})
    return adapters


def nll_side_by_side(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[Message]], batch_size: int
) -> tuple[float, float, float]:
    """Seconds of `answer_nll` at `batch_size` and at 1 over the same items, and the largest relative
    difference of their NLLs. The sides take turns on runs of answer_nll's own (length-sorted) batches, so a
    change in the machine's other load falls on both alike."""
    lengths = [len(render_training_example(tokenizer, c).input_ids) for c in conversations]
    ordered = [conversations[i] for i in sorted(range(len(conversations)), key=lengths.__getitem__)]
    seconds = [0.0, 0.0]
    scores: list[list[pd.DataFrame]] = [[], []]
    for start in range(0, len(ordered), 4 * batch_size):
        turn = ordered[start : start + 4 * batch_size]
        for side, size in enumerate((batch_size, 1)):
            started = time.perf_counter()
            scores[side].append(answer_nll(model, tokenizer, turn, size))
            seconds[side] += time.perf_counter() - started
    batched, single = (pd.concat(frames, ignore_index=True)["nll_sum"] for frames in scores)
    return seconds[0], seconds[1], float(((batched - single).abs() / single.abs().clip(lower=1e-9)).max())


def by_contender(
    model: PeftModel,
    tokenizer: Any,
    contenders: Sequence[Contender],
    sources: Sequence[str],
    settings: EvaluationSettings,
    sample: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """`compare_contenders` on every item as eval_report runs it; then on `sample` evenly spread items, batched and
    one at a time, the two sides in turn contender by contender, so a change in the machine's load falls on both."""
    picked = range(0, len(sources), max(len(sources) // sample, 1))[:sample]
    few_sources = [sources[i] for i in picked]
    notes, few_notes = list(range(len(sources))), list(picked)  # timings only: no interval is read
    on_sample = replace(settings, max_examples=sample)
    one_at_a_time = replace(on_sample, batch_size=1)
    everything: dict[str, pd.DataFrame] = {}
    batched: dict[str, pd.DataFrame] = {}
    alone: dict[str, pd.DataFrame] = {}
    for contender in contenders:
        everything |= compare_contenders(model, tokenizer, [contender], sources, notes, settings)
        few = replace(contender, conversations=[contender.conversations[i] for i in picked])
        batched |= compare_contenders(model, tokenizer, [few], few_sources, few_notes, on_sample)
        alone |= compare_contenders(model, tokenizer, [few], few_sources, few_notes, one_at_a_time)
    return everything, batched, alone


def seconds_of(frame: pd.DataFrame) -> float:
    return sum(frame.attrs["seconds"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="test items evaluated by every contender")
    parser.add_argument("--batch-size", type=int, default=16, help="answer_nll batch size in (a)")
    parser.add_argument("--eval-batch-size", type=int, default=EvaluationSettings.batch_size, help="eval_report's")
    parser.add_argument("--max-new-tokens", type=int, default=EvaluationSettings.max_new_tokens)
    parser.add_argument("--sample", type=int, default=16, help="items run batched and one at a time, side by side")
    add_model_arguments(parser)
    add_json_argument(parser)
    args = parser.parse_args()
    conversations, sources = eval_items(args.notes, args.items)
    loaded = load_model(args.model, args.models_dir, args.dtype)
    base, tokenizer = loaded.model, loaded.tokenizer
    with tempfile.TemporaryDirectory() as folder:
        adapters = trained_adapters(loaded.path, tokenizer, conversations, Path(folder))
        model = with_adapters(base, {"tuned": adapters["tuned"], "champion": adapters["champion"]})

        answer_nll(model, tokenizer, conversations[:2], 2)  # first-call kernel set-up, on neither side
        with model.disable_adapter():
            nll_batched, nll_single, apart = nll_side_by_side(model, tokenizer, conversations, args.batch_size)
        examples = pick_examples([(c[1]["content"], c[2]["content"]) for c in conversations])
        contenders = [
            Contender("base", None, conversations),
            Contender("prompted", None, best_prompt_conversations(conversations, examples)),
            Contender("champion", "champion", conversations),
            Contender("tuned", "tuned", conversations),
        ]
        settings = EvaluationSettings(args.items, args.max_new_tokens, args.eval_batch_size)
        sample = min(args.sample, args.items)
        results, batched, alone = by_contender(model, tokenizer, contenders, sources, settings, sample)
    started = time.perf_counter()
    summary = {name: summarize(frame) for name, frame in results.items()}
    win_rates(results, "tuned")
    metrics_seconds = time.perf_counter() - started
    table = pd.DataFrame(
        [
            {
                "contender": name,
                "NLL s": frame.attrs["seconds"]["nll"],
                "generation s": frame.attrs["seconds"]["generation"],
                "total s": seconds_of(frame),
                f"{sample} items batched s": seconds_of(batched[name]),
                f"{sample} items one at a time s": seconds_of(alone[name]),
                "NLL": summary[name]["nll"],
                "words": summary[name]["words"],
            }
            for name, frame in results.items()
        ]
    )
    total = table["total s"].sum() + metrics_seconds
    sample_batched = table[f"{sample} items batched s"].sum()
    sample_alone = table[f"{sample} items one at a time s"].sum()
    print(
        f"evaluation: {args.items} test items, {len(contenders)} contenders, max_new_tokens {args.max_new_tokens}, "
        f"batch {args.eval_batch_size}; {loaded.label}; {machine()}\n"
    )
    print(
        f"(a) answer_nll over the base contender's items: batch {args.batch_size} {nll_batched:.1f} s, "
        f"batch 1 {nll_single:.1f} s; largest relative NLL difference {apart:.1e}\n"
    )
    print("(b) eval_report's model work by contender")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(
        f"summaries and win rates: {metrics_seconds:.2f} s; total {total:.1f} s; on {sample} items batched "
        f"{sample_batched:.1f} s, one at a time {sample_alone:.1f} s; peak RSS {peak_rss_mib():.0f} MiB\n"
    )
    batch = f"batch {args.eval_batch_size} vs 1"
    rows = [
        Row(
            "evaluation",
            f"answer NLL items/s (batch {args.batch_size} vs 1)",
            args.items / nll_batched,
            args.items / nll_single,
            nll_single / nll_batched,
            "items/s",
        ),
        Row("evaluation", f"eval_report model work, {args.items} items, batched", total, None, None, "s"),
        Row(
            "evaluation",
            f"eval_report model work, {sample} items ({batch})",
            sample_batched,
            sample_alone,
            sample_alone / sample_batched,
            "s",
        ),
        *(
            Row(
                "evaluation",
                f"  of which {row['contender']}, {sample} items ({batch})",
                row[f"{sample} items batched s"],
                row[f"{sample} items one at a time s"],
                row[f"{sample} items one at a time s"] / row[f"{sample} items batched s"],
                "s",
            )
            for _, row in table.iterrows()
        ),
    ]
    report(rows, args.json)


if __name__ == "__main__":
    main()
