"""generate_batch against plain one-prompt-at-a-time `model.generate`: left padding, prompts read in groups
of similar length, EOS and stop strings."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from transformers import GenerationConfig

from fine_tune_dag.core.common.chat import chat_messages, render_prompt_ids
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.measures import evaluate_contender, write_notes
from fine_tune_dag.core.generation.base import Decoding, EngineSettings, GenerationRequest
from fine_tune_dag.core.generation.batch import continuation_text, cut_at_stop, generate_batch
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.generation.transformers import TransformersEngine
from fine_tune_dag.core.models.adapters import load_generation_settings, save_generation_settings
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_causal_lm, select_dtype

QUESTIONS = [
    "Why?",
    "Why do you oil the chain before the long ride in winter?",
    "What do the bees do when it is cold and the river is loud and the wind is honest?",
    "Q: Why ride slowly?",
    "Here is the thing",
    "Tell me all of it: " + "the chain wears slowly, then all at once, and the bees are quiet in the cold. " * 6,
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    loaded = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():  # make the random model's outputs depend on its input
        for parameter in loaded.parameters():
            parameter.mul_(25)
    return loaded


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer: Any) -> list[list[int]]:
    rendered = [render_prompt_ids(tiny_tokenizer, chat_messages("You are me.", q)) for q in QUESTIONS]
    assert len({len(p) for p in rendered}) == len(rendered)  # every batch needs left padding
    return rendered


def alone(model: Any, tokenizer: Any, prompt: list[int], stop_strings: list[str] | None = None) -> list[int]:
    """Greedy ids of one unpadded prompt through transformers directly (its own stop strings when given),
    up to and with the EOS that ended it."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stop_strings=stop_strings,
            tokenizer=tokenizer if stop_strings else None,
        )
    return out[0, len(prompt) :].tolist()


def forward_passes(model: Any, work: Callable[[], object]) -> int:
    """How many times `work` ran the model: one per generated token, the first on the prompt."""
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        work()
    finally:
        hook.remove()
    return len(calls)


def plain_token(tokenizer: Any, ids: list[int], skip: int = 2) -> tuple[int, str]:
    """A generated token after the first `skip` that decodes to letters only, to stop on."""
    for position in range(skip, len(ids)):
        text = tokenizer.decode([ids[position]])
        if text.strip().isalpha() and text.isascii():
            return position, text
    pytest.skip("the random model produced no plain token to stop on")


def test_batched_greedy_output_equals_one_at_a_time(model, tiny_tokenizer, prompts):
    """The fallback engine: left padding changes no greedy answer."""
    expected = [continuation_text(tiny_tokenizer, alone(model, tiny_tokenizer, p), ()) for p in prompts]
    assert all(expected)
    for batch_size in (1, 3, len(prompts)):  # several batches, one padded batch, each prompt alone
        assert generate_batch(model, tiny_tokenizer, prompts, NEW_TOKENS, batch_size=batch_size) == expected


def test_stop_string_cuts_the_text_and_ends_the_row(model, tiny_tokenizer, prompts):
    ids = [alone(model, tiny_tokenizer, p) for p in prompts]
    position, stop = plain_token(tiny_tokenizer, ids[1])
    full = [tiny_tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    batched = generate_batch(model, tiny_tokenizer, prompts, NEW_TOKENS, batch_size=3, stop_strings=[stop])
    assert batched == [cut_at_stop(text, [stop]).strip() for text in full]
    assert stop not in batched[1] and batched[1] == tiny_tokenizer.decode(ids[1][:position]).strip()

    def stop_alone() -> list[str]:
        return generate_batch(model, tiny_tokenizer, [prompts[1]], NEW_TOKENS, stop_strings=[stop])

    assert forward_passes(model, stop_alone) == position + 1  # no step after the one that completed the stop


def test_stop_string_must_lie_in_the_generated_text(model, tiny_tokenizer, prompts):
    """The prompt ends with the template's newline: a stop string that starts there is not a stop."""
    ids = alone(model, tiny_tokenizer, prompts[1])
    first = tiny_tokenizer.decode(ids[:1])
    stop = "\n" + first
    assert tiny_tokenizer.decode(prompts[1]).endswith("\n") and stop not in tiny_tokenizer.decode(ids)
    assert len(alone(model, tiny_tokenizer, prompts[1], stop_strings=[stop])) == 1  # as transformers has it
    assert generate_batch(model, tiny_tokenizer, [prompts[1]], NEW_TOKENS, stop_strings=[stop]) == [
        continuation_text(tiny_tokenizer, ids, ())
    ]


def test_eos_ends_one_row_and_leaves_the_others(model, tiny_tokenizer, prompts):
    ids = [alone(model, tiny_tokenizer, p) for p in prompts]
    position, _ = plain_token(tiny_tokenizer, ids[3])
    eos = ids[3][position]
    if eos in ids[3][:position] or any(eos in other for i, other in enumerate(ids) if i != 3):
        pytest.skip("the chosen token also appears elsewhere")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)  # a model that ends its answer there
    assert tokenizer.eos_token_id == eos
    batched = generate_batch(model, tokenizer, prompts, NEW_TOKENS, batch_size=len(prompts))
    assert batched[3] == tiny_tokenizer.decode(ids[3][:position]).strip()
    assert forward_passes(model, lambda: generate_batch(model, tokenizer, [prompts[3]], NEW_TOKENS)) == position + 1
    others = [continuation_text(tiny_tokenizer, i, ()) for i in ids]
    assert batched[:3] + batched[4:] == others[:3] + others[4:]


def test_each_prompt_stops_at_its_own_token_limit(model, tiny_tokenizer, prompts):
    """Rows with limits of their own, in one padded batch and in batches that rows join as others finish."""
    limits = [3, 12, 5, 1, 8, 10]
    ids = [alone(model, tiny_tokenizer, p) for p in prompts]
    assert all(tiny_tokenizer.eos_token_id not in i for i in ids)  # only the limits end these rows
    for batch_size in (2, len(prompts)):
        assert generate_batch(model, tiny_tokenizer, prompts, limits, batch_size=batch_size) == [
            continuation_text(tiny_tokenizer, i[:limit], ()) for i, limit in zip(ids, limits)
        ]
    with pytest.raises(ValueError, match="2 token limits for 6 prompts"):
        generate_batch(model, tiny_tokenizer, prompts, [3, 4])


def test_written_notes_may_run_as_long_as_their_reference_plus_a_margin(model, tiny_tokenizer, monkeypatch):
    """A long passage's counterpart is not cut at a fixed length and a short one's does not run on; the setting
    caps them all."""
    import fine_tune_dag.core.evaluation.measures as evaluation

    asked: list[object] = []

    def spy(*args: Any, **kwargs: Any) -> list[str]:
        asked.append(args[3])
        return generate_batch(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate_batch", spy)
    references = ["Short.", "The chain wears slowly, then all at once.", "the bees are quiet in the cold. " * 9]
    lengths = [len(tiny_tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references]
    assert lengths == [5, 10, 74]
    conversations = [chat_messages("You are me.", "Write a note about chains.", r) for r in references]
    notes = write_notes(
        model, tiny_tokenizer, conversations, EvaluationSettings(written_max_new_tokens=64), GenerationSettings()
    )
    assert asked == [[21, 26, 64]] and len(notes) == 3  # 16 tokens over each reference, at most 64


def ngrams(ids: list[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + size]) for i in range(len(ids) - size + 1)]


def test_no_repeat_ngram_bans_repeats_in_the_continuation_but_lets_it_quote_the_prompt(tiny_model_dir, tiny_tokenizer):
    """The untrained model answers newline after newline. The prompt holds the newline pair twice: transformers'
    own ban (whole sequence) forbids even the first newline after the prompt's last; ours lets the answer open
    with the prompt's pair and only then forbids the answer to repeat one of its own pairs."""
    untrained = load_causal_lm(tiny_model_dir).eval()
    newline = tiny_tokenizer.encode("\n", add_special_tokens=False)[0]
    prompt = render_prompt_ids(tiny_tokenizer, chat_messages("You are me.", "one two\n\nthree\n\nfour"))
    assert ngrams(prompt, 2).count((newline, newline)) == 2 and prompt[-1] == newline

    def continuation(**options: Any) -> list[int]:
        with torch.inference_mode():
            out = untrained.generate(
                input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **options
            )
        return out[0, len(prompt) :].tolist()

    plain = continuation(max_new_tokens=20, do_sample=False)
    assert plain == [newline] * 20  # the loop this guards against
    whole_sequence = continuation(max_new_tokens=20, do_sample=False, no_repeat_ngram_size=2)
    assert whole_sequence[0] != newline

    request = GenerationRequest(tuple(prompt), 20, Decoding(no_repeat_ngram_size=2))
    ours = TransformersEngine(untrained, tiny_tokenizer).generate([request])[0].tokens
    assert ours[:2] == [newline, newline]  # the prompt's repeated pair, quoted
    assert len(set(ngrams(ours, 2))) == len(ours) - 1  # no pair of its own twice
    assert generate_batch(untrained, tiny_tokenizer, [prompt], 20, no_repeat_ngram_size=2) == [
        continuation_text(tiny_tokenizer, ours, ())
    ]


def test_no_repeat_ngram_holds_for_every_row_of_a_padded_batch_and_is_off_by_default(model, tiny_tokenizer, prompts):
    """Rows of different prompt lengths and rows that join the batch as others finish: each row's ban looks
    at its own generated tokens only."""
    size, new_tokens = 2, 60

    def repeats(no_repeat_ngram_size: int, batch_size: int) -> list[int]:
        decoding = Decoding(no_repeat_ngram_size=no_repeat_ngram_size)
        engine = TransformersEngine(model, tiny_tokenizer, batch_size)
        rows = [f.tokens for f in engine.generate([GenerationRequest(tuple(p), new_tokens, decoding) for p in prompts])]
        return [len(ngrams(row, size)) - len(set(ngrams(row, size))) for row in rows]

    assert sum(repeats(0, len(prompts))) > 0  # off by default: generate_batch's other callers decode as before
    assert repeats(size, len(prompts)) == [0] * len(prompts)
    assert repeats(size, 2) == [0] * len(prompts)


def test_generation_settings_round_trip_through_a_transformers_generation_config(tmp_path):
    sampled = GenerationSettings(max_new_tokens=64, temperature=0.3, top_p=0.8, no_repeat_ngram_size=4, seed=11)
    path = save_generation_settings(tmp_path, sampled)
    assert path == tmp_path / "generation_config.json"
    written = json.loads(path.read_text())
    assert {k: v for k, v in written.items() if k != "transformers_version"} == {
        "do_sample": True,
        "max_new_tokens": 64,
        "no_repeat_ngram_size": 4,
        "seed": 11,
        "temperature": 0.3,
        "top_p": 0.8,
    }
    assert load_generation_settings(tmp_path) == sampled

    greedy = GenerationSettings(temperature=0.0, no_repeat_ngram_size=0)
    save_generation_settings(tmp_path, greedy)
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.do_sample is False and config.no_repeat_ngram_size == 0
    assert load_generation_settings(tmp_path) == greedy


def test_defaults_are_saved_as_a_valid_generation_config_and_a_folder_without_one_reads_them(tmp_path):
    assert asdict(GenerationSettings()) == {
        "max_new_tokens": 160,
        "temperature": 0.7,
        "top_p": 0.9,
        "no_repeat_ngram_size": 3,
        "seed": 0,
    }
    assert load_generation_settings(tmp_path) == GenerationSettings()  # an adapter saved before the file existed
    save_generation_settings(tmp_path, GenerationSettings())
    config = GenerationConfig.from_pretrained(tmp_path)
    assert (config.do_sample, config.temperature, config.top_p) == (True, 0.7, 0.9)
    assert config.no_repeat_ngram_size == 3 and config.max_new_tokens == 160


@pytest.mark.parametrize(
    "wrong",
    [{"max_new_tokens": 0}, {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"no_repeat_ngram_size": -1}],
)
def test_generation_settings_out_of_range_are_refused(wrong):
    with pytest.raises(ValueError, match="out of range"):
        GenerationSettings(**wrong)


def test_evaluation_answers_and_writing_do_not_depend_on_the_batch_size(tiny_model_dir, tiny_tokenizer, tmp_path):
    """Evaluation's own decoding on the default engine: greedy answers with the n-gram ban, and sampled writing
    (each row seeded by its prompt), equal at every batch size, one at a time included."""
    settings = EvaluationSettings(max_new_tokens=16, written_max_new_tokens=16)
    model = load_causal_lm(tiny_model_dir, "cpu", select_dtype(settings.dtype, "cpu")).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(25)
    sharp = tmp_path / "models" / "sharp"
    model.save_pretrained(sharp)
    tiny_tokenizer.save_pretrained(sharp)
    conversations = [chat_messages("You are me.", q, "An answer.") for q in QUESTIONS]
    sources = ["the chain wears slowly"] * len(conversations)
    answers, writing = [], []
    for batch_size in (1, 2, 4, len(QUESTIONS)):
        engine = open_engine(sharp, {}, tiny_tokenizer, EngineSettings(max_batch=batch_size))
        chosen = replace(settings, batch_size=batch_size)
        generated = evaluate_contender(model, tiny_tokenizer, conversations, chosen, sources, sources, engine=engine)
        answers.append(generated["generation"].tolist())
        sampled = GenerationSettings(max_new_tokens=16, temperature=4.0, top_p=1.0)
        writing.append(write_notes(engine, tiny_tokenizer, conversations, chosen, sampled))
    assert engine.choice.engine == "openvino"
    assert all(answers[0]) and all(a == answers[0] for a in answers)
    assert all(w == writing[0] for w in writing) and writing[0] != answers[0]
