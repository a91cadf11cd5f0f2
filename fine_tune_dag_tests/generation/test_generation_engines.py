"""The engines behind every generation: OpenVINO GenAI on the project's GGUF, transformers' `generate` as the
fallback, the choice between them, and the conversions they run, kept with their lineage."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages, render_prompt_ids
from fine_tune_dag.core.export.merge import export_merged
from fine_tune_dag.core.generation.base import (
    Decoding,
    EngineSettings,
    EngineUnavailable,
    GenerationRequest,
    choose_engine,
    row_seed,
)
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.generation.conversion import MANIFEST, conversion_folder, engine_gguf
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.generation.openvino import OpenVINOEngine
from fine_tune_dag.core.generation.transformers import TransformersEngine
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora

pytest.importorskip("openvino_genai")  # installed by `make install`; the fallback tests below need no engine

QUESTIONS = [
    "Why ride slowly?",
    "What does the mechanic oil first?",
    "The bees were quiet in the cold",
    "Here is the thing",
    "a chain wears slowly",
    "1 | repair and patience",
    "Why do you oil the chain?",
    "the river was loud",
]


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights scaled up: random weights scaled by 25 choose their tokens by clear
    margins, so two correct engines agree token for token, and a changed weight shows."""
    folder = tmp_path_factory.mktemp("models") / "sharp-tiny"
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(25)
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(sharp_model_dir: Path):
    return load_tokenizer(sharp_model_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [render_prompt_ids(tokenizer, chat_messages(DEFAULT_SYSTEM_PROMPT, q, "")[:-1]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def adapter_dir(sharp_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = TrainingSettings(
        max_steps=10, batch_size=1, learning_rate=5e-2, warmup_ratio=0.0, lora_dropout=0.0, dtype="float32"
    )
    conversation = chat_messages(
        DEFAULT_SYSTEM_PROMPT, QUESTIONS[0], "Because the hill is long and the wind is honest."
    )
    run = train_lora(sharp_model_dir, [conversation], settings)
    provenance = {"base_model": "sharp-tiny", "base_model_path": str(sharp_model_dir), "dataset_version": "abc"}
    return save_adapter(run, tmp_path_factory.mktemp("adapters"), "v1", provenance)


@pytest.fixture(scope="module")
def engine(sharp_model_dir: Path, adapter_dir: Path, tokenizer) -> OpenVINOEngine:
    opened = open_engine(sharp_model_dir, {"tuned": adapter_dir}, tokenizer)
    assert isinstance(opened, OpenVINOEngine), opened.choice
    return opened


def rounded_to_f16(model):
    """The model as the engine's f16 GGUF stores it (2-D weights in float16), computed in float32 again."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.copy_(parameter.half().float())
    return model


def torch_greedy(model, prompts: list[list[int]], new_tokens: int, eos: int) -> list[list[int]]:
    """transformers' float32 greedy decoding, one prompt at a time: the reference every engine is held to."""
    out = []
    for prompt in prompts:
        config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        ids = model.generate(torch.tensor([prompt]), generation_config=config)
        tokens = ids[0, len(prompt) :].tolist()
        out.append(tokens[: tokens.index(eos) + 1] if eos in tokens else tokens)
    return out


def test_auto_picks_openvino_on_cpus_vllm_on_cuda_and_says_why_it_falls_back():
    everything, nothing = (lambda name: True), (lambda name: name == "transformers")
    assert choose_engine("auto", "cpu", everything).engine == "openvino"
    assert choose_engine("auto", "cuda", everything).engine == "vllm"
    assert choose_engine("auto", "mps", everything).engine == "transformers"
    assert "without OpenVINO GenAI" in choose_engine("auto", "cpu", nothing).reason
    with pytest.raises(EngineUnavailable, match="vllm is not installed"):
        choose_engine("vllm", "cuda", nothing)
    with pytest.raises(ValueError, match="must be one of"):
        choose_engine("llamacpp", "cpu")  # type: ignore[arg-type]


def test_openvino_greedy_matches_transformers_float32_within_the_f16_weights(
    engine, sharp_model_dir, tokenizer, prompts
):
    """On the same f16-rounded weights, token for token; on the float32 weights themselves, 7 of 8 prompts agree
    in all 24 tokens (measured: the eighth parts where the rounding of the stored weights tips a near tie)."""
    produced = [f.tokens for f in engine.generate([GenerationRequest(tuple(p), 24) for p in prompts])]
    rounded = rounded_to_f16(load_causal_lm(sharp_model_dir).eval())
    assert produced == torch_greedy(rounded, prompts, 24, tokenizer.eos_token_id)
    exact = torch_greedy(load_causal_lm(sharp_model_dir).eval(), prompts, 24, tokenizer.eos_token_id)
    assert sum(p == r for p, r in zip(produced, exact)) == 7


def test_the_adapter_is_applied_and_answers_as_the_merged_model_does(engine, adapter_dir, tokenizer, prompts, tmp_path):
    """The merged model in torch, its weights rounded as the GGUF stores them, is the reference. A silent no-op
    (the base model's text under the adapter's name) fails the first assertion."""
    base = engine.generate([GenerationRequest(tuple(p), 24) for p in prompts])
    tuned = engine.generate([GenerationRequest(tuple(p), 24, adapter="tuned") for p in prompts])
    assert sum(b.tokens != t.tokens for b, t in zip(base, tuned)) >= len(prompts) // 2
    merged = rounded_to_f16(load_causal_lm(export_merged(adapter_dir, tmp_path / "merged")).eval())
    reference = torch_greedy(merged, prompts, 24, tokenizer.eos_token_id)
    agree_for = [next((i for i, (a, b) in enumerate(zip(t.tokens, r)) if a != b), 24) for t, r in zip(tuned, reference)]
    # measured: 7 of 8 answers equal in all 24 tokens; the eighth for its first 11, where the two sums of the
    # same float32 products, taken in another order, tip a near tie
    assert agree_for.count(24) == 7 and min(agree_for) >= 8


def test_greedy_answers_do_not_depend_on_the_batch(engine, tokenizer, prompts, sharp_model_dir, adapter_dir):
    answers = []
    for max_batch in (1, 2, 4, 16):
        sized = open_engine(sharp_model_dir, {"tuned": adapter_dir}, tokenizer, EngineSettings(max_batch=max_batch))
        answers.append(generate_batch(sized, tokenizer, prompts, 24, no_repeat_ngram_size=3, adapter="tuned"))
    assert all(answers[0]) and all(a == answers[0] for a in answers)


def test_sampled_text_depends_on_seed_and_prompt_only(engine, prompts):
    sampled = Decoding(temperature=8.0, top_p=1.0, seed=7)  # the sharp model's margins need a high temperature
    batch = engine.generate([GenerationRequest(tuple(p), 24, sampled) for p in prompts])
    alone = engine.generate([GenerationRequest(tuple(prompts[5]), 24, sampled)])
    other_seed = engine.generate([GenerationRequest(tuple(prompts[5]), 24, replace(sampled, seed=8))])
    greedy = engine.generate([GenerationRequest(tuple(prompts[5]), 24)])
    assert alone[0].tokens == batch[5].tokens
    assert other_seed[0].tokens != alone[0].tokens and greedy[0].tokens != alone[0].tokens
    assert row_seed(7, prompts[5]) == row_seed(7, list(prompts[5])) < 2**31


def test_each_request_keeps_its_limit_and_a_stop_string_ends_it(engine, tokenizer, prompts):
    full = engine.generate([GenerationRequest(tuple(prompts[1]), 24)])[0].tokens
    stop = tokenizer.decode(full[3:5])
    limited = engine.generate([GenerationRequest(tuple(prompts[1]), 5), GenerationRequest(tuple(prompts[2]), 9)])
    assert [len(f.tokens) for f in limited] == [5, 9] and {f.reason for f in limited} == {"length"}
    stopped = generate_batch(engine, tokenizer, [prompts[1]], 24, stop_strings=[stop])
    assert stopped == [tokenizer.decode(full).split(stop)[0].strip()]


def test_streamed_tokens_join_to_the_batch_answer_and_requests_join_a_running_batch(engine, prompts):
    whole = engine.generate([GenerationRequest(tuple(p), 16) for p in prompts[:3]])
    assert [t for piece in engine.stream(GenerationRequest(tuple(prompts[0]), 16)) for t in piece] == whole[0].tokens
    first = engine.submit(GenerationRequest(tuple(prompts[1]), 16))
    got = {1: [], 2: []}
    engine.step()
    got[1] += first.read()
    second = engine.submit(GenerationRequest(tuple(prompts[2]), 16))  # joins while the first decodes
    while not (first.finished and second.finished):
        engine.step()
        got[1] += first.read()
        got[2] += second.read()
    assert got[1] == whole[1].tokens and got[2] == whole[2].tokens


def test_a_conversion_is_reused_rebuilt_when_its_base_changes_and_never_trusted_when_corrupt(sharp_model_dir, tmp_path):
    base = tmp_path / "models" / "copy"
    shutil.copytree(sharp_model_dir, base)
    first = engine_gguf(base)
    assert first.built and first.path.parent == conversion_folder(base, None)
    assert not engine_gguf(base).built  # reused
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    changed = engine_gguf(base)
    assert changed.built and changed.fingerprint != first.fingerprint
    with open(changed.path, "r+b") as handle:  # flip bytes inside the weights: same size, wrong content
        handle.seek(changed.path.stat().st_size // 2)
        handle.write(b"\x00\x01\x02\x03")
    rebuilt = engine_gguf(base)
    assert rebuilt.built
    assert json.loads((rebuilt.path.parent / MANIFEST).read_text())["fingerprint"] == changed.fingerprint


def test_a_model_the_engine_cannot_run_falls_back_with_the_model_and_the_reason(tmp_path, tiny_model_dir, tokenizer):
    odd = tmp_path / "models" / "not-llama"
    shutil.copytree(tiny_model_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    loaded = load_causal_lm(tiny_model_dir).eval()
    engine = open_engine(odd, {}, tokenizer, EngineSettings(), torch_model=lambda: loaded)
    assert isinstance(engine, TransformersEngine)
    assert engine.choice.reason.startswith("fallback from openvino") and str(odd) in engine.choice.reason
    assert engine.choice.metadata()["generation_engine"] == "transformers"


def test_the_fallback_generates_with_transformers_and_bans_repeats_only_in_the_continuation(
    sharp_model_dir, tokenizer, prompts
):
    model = load_causal_lm(sharp_model_dir).eval()
    fallback = open_engine(
        sharp_model_dir, {}, tokenizer, EngineSettings(engine="transformers"), torch_model=lambda: model
    )
    assert isinstance(fallback, TransformersEngine) and fallback.choice.reason == "chosen in settings"
    produced = fallback.generate([GenerationRequest(tuple(p), 24) for p in prompts])
    assert [f.tokens for f in produced] == torch_greedy(model, prompts, 24, tokenizer.eos_token_id)
    banned = fallback.generate([GenerationRequest(tuple(p), 24, Decoding(no_repeat_ngram_size=2)) for p in prompts])
    for finished in banned:
        pairs = list(zip(finished.tokens, finished.tokens[1:]))
        assert len(pairs) == len(set(pairs))


def test_the_ngram_ban_holds_on_the_engine_and_chooses_as_transformers_does(
    engine, sharp_model_dir, tokenizer, prompts
):
    """OpenVINO GenAI applies no_repeat_ngram_size in beam search only; the engine keeps the ban itself. Greedy
    with a ban of 2: no row repeats a pair of its own, and the answers are the fallback's own banned answers on the
    f16-rounded weights (measured: 8 of 8)."""
    banned = Decoding(no_repeat_ngram_size=2)
    free = [f.tokens for f in engine.generate([GenerationRequest(tuple(p), 24) for p in prompts])]
    kept = [f.tokens for f in engine.generate([GenerationRequest(tuple(p), 24, banned) for p in prompts])]
    pairs = [list(zip(t, t[1:])) for t in kept]
    assert all(len(p) == len(set(p)) for p in pairs)
    assert sum(len(set(zip(t, t[1:]))) < len(t) - 1 for t in free) == 2  # unbanned, two rows repeat a pair
    reference = TransformersEngine(rounded_to_f16(load_causal_lm(sharp_model_dir).eval()), tokenizer)
    expected = [f.tokens for f in reference.generate([GenerationRequest(tuple(p), 24, banned) for p in prompts])]
    assert sum(k == e for k, e in zip(kept, expected)) == 8
    sampled = replace(banned, temperature=8.0, seed=3)
    batch = engine.generate([GenerationRequest(tuple(p), 24, sampled) for p in prompts])
    alone = engine.generate([GenerationRequest(tuple(prompts[4]), 24, sampled)])
    assert alone[0].tokens == batch[4].tokens  # ban points drawn by seed and prefix: batch-invariant


def test_scores_kept_between_ban_points_equal_a_fresh_read_of_the_whole_prefix(sharp_model_dir, adapter_dir, prompts):
    """The torch side keeps a request's keys and values between ban points and reads only the new tokens."""
    scorer = open_engine(
        sharp_model_dir, {"tuned": adapter_dir}, load_tokenizer(sharp_model_dir), EngineSettings("transformers")
    )
    key, prompt = object(), prompts[0]
    forwards = []
    hook = (
        scorer.model.get_base_model()
        .get_decoder()
        .register_forward_pre_hook(
            lambda _m, args, kwargs: forwards.append(kwargs["input_ids"].shape[1]), with_kwargs=True
        )
    )
    grown = [
        scorer.next_token_scores(prompt[:n], "tuned", key) for n in (len(prompt) - 6, len(prompt) - 2, len(prompt))
    ]
    hook.remove()
    assert forwards == [len(prompt) - 6, 4, 2]
    scorer.forget(key)
    fresh = scorer.next_token_scores(prompt, "tuned")
    assert grown[-1] == pytest.approx(fresh, abs=1e-4)
    assert not (grown[-1] == pytest.approx(scorer.next_token_scores(prompt, None), abs=1e-4))  # the adapter counts
