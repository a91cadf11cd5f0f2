"""GGUF export: what llama.cpp reads from the files, the weights loaded back (transformers dequantizes GGUF), and
the Ollama Modelfile's template rendered as Go's text/template would render it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages
from fine_tune_dag.core.export.gguf import (
    export_gguf,
    llama_cpp_pre_tokenizer,
    ollama_modelfile,
    ollama_template,
    write_ollama_modelfile,
)
from fine_tune_dag.core.models.adapters import load_generation_settings, save_generation_settings
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_tokenizer

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2  # rows of 64 and 128: whole Q8_0 blocks of 32
SETTINGS = GenerationSettings(max_new_tokens=77, temperature=0.5, top_p=0.8, no_repeat_ngram_size=3, seed=7)
# The bundled SmolLM2-135M-Instruct's chat template: it adds its own system turn when a conversation has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_llama(folder: Path, tokenizer: Any, tied: bool) -> Path:
    """A random Llama with grouped KV heads whose weights are large enough that attention is far from uniform, so
    Q/K rows in the wrong order change the logits several times over; norms random too, so swapped norms show."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=512,
        rope_theta=50_000.0,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.1)
            else:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_generation_settings(folder, SETTINGS)
    return folder


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("gguf") / "merged", tiny_tokenizer, tied=True)


@pytest.fixture(scope="module")
def exported(merged_dir: Path) -> dict[str, Path]:
    f16, q8_0 = export_gguf(merged_dir, merged_dir.parent / "gguf")
    return {"f16": f16, "q8_0": q8_0}


def _fields(path: Path) -> dict[str, Any]:
    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}


def _prompt_ids(tokenizer: Any) -> torch.Tensor:
    messages = chat_messages(DEFAULT_SYSTEM_PROMPT, "Why ride slowly? Because the hill is long, 1 | 4.")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def _logit_error(merged: Path, gguf_file: Path, tokenizer: Any) -> float:
    """Largest logit difference between the GGUF (dequantized by transformers) and the merged model, in units of
    the merged model's logit spread."""
    ids = _prompt_ids(tokenizer)
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    with torch.no_grad():
        expected, got = reference(ids).logits, loaded.eval()(ids).logits
    return ((expected - got).abs().max() / expected.std()).item()


def test_metadata_is_what_llama_cpp_reads(exported: dict[str, Path], tiny_tokenizer) -> None:
    for kind, file_type in (("f16", gguf.LlamaFileType.MOSTLY_F16), ("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0)):
        fields = _fields(exported[kind])
        assert fields["general.architecture"] == "llama"
        assert fields["general.file_type"] == file_type
        assert fields["llama.block_count"] == LAYERS
        assert fields["llama.embedding_length"] == HIDDEN
        assert fields["llama.feed_forward_length"] == FFN
        assert fields["llama.attention.head_count"] == HEADS
        assert fields["llama.attention.head_count_kv"] == KV_HEADS
        assert fields["llama.rope.dimension_count"] == HIDDEN // HEADS
        assert fields["llama.rope.freq_base"] == 50_000.0
        assert fields["llama.context_length"] == 512
        assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
        assert fields["llama.vocab_size"] == len(tiny_tokenizer)
        assert fields["tokenizer.ggml.model"] == "gpt2"
        assert fields["tokenizer.ggml.pre"] == "gpt-2"  # the tiny tokenizer splits as GPT-2's byte-level BPE does
        assert fields["tokenizer.chat_template"] == tiny_tokenizer.chat_template
        assert fields["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
        assert fields["tokenizer.ggml.bos_token_id"] == tiny_tokenizer.bos_token_id
        # Ollama and llama.cpp add BOS unless told not to; training never did.
        assert fields["tokenizer.ggml.add_bos_token"] is False
        assert fields["tokenizer.ggml.add_eos_token"] is False


def test_vocabulary_marks_special_tokens_and_tokenizes_as_training(exported: dict[str, Path], tiny_tokenizer) -> None:
    fields = _fields(exported["f16"])
    vocab = tiny_tokenizer.get_vocab()
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = fields["tokenizer.ggml.token_type"]
    specials = {tiny_tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL} == specials
    assert {t for i, t in enumerate(types) if i not in specials} == {gguf.TokenType.NORMAL}
    assert len(fields["tokenizer.ggml.merges"]) > 0
    # transformers rebuilds a tokenizer from the GGUF vocabulary and merges alone: the same ids as training's.
    rebuilt = AutoTokenizer.from_pretrained(exported["f16"].parent, gguf_file=exported["f16"].name)
    assert _prompt_ids(rebuilt).tolist() == _prompt_ids(tiny_tokenizer).tolist()


def test_tensors_have_llama_cpp_names_shapes_and_types(exported: dict[str, Path], tiny_tokenizer) -> None:
    head_dim = HIDDEN // HEADS
    shapes = {"token_embd.weight": [HIDDEN, len(tiny_tokenizer)], "output_norm.weight": [HIDDEN]}
    for block in range(LAYERS):
        shapes |= {
            f"blk.{block}.attn_norm.weight": [HIDDEN],
            f"blk.{block}.attn_q.weight": [HIDDEN, HIDDEN],
            f"blk.{block}.attn_k.weight": [HIDDEN, KV_HEADS * head_dim],
            f"blk.{block}.attn_v.weight": [HIDDEN, KV_HEADS * head_dim],
            f"blk.{block}.attn_output.weight": [HIDDEN, HIDDEN],
            f"blk.{block}.ffn_norm.weight": [HIDDEN],
            f"blk.{block}.ffn_gate.weight": [HIDDEN, FFN],
            f"blk.{block}.ffn_up.weight": [HIDDEN, FFN],
            f"blk.{block}.ffn_down.weight": [FFN, HIDDEN],
        }  # tied embeddings: no output.weight, llama.cpp reuses token_embd
    for kind, matrix_type in (("f16", "F16"), ("q8_0", "Q8_0")):
        tensors = gguf.GGUFReader(exported[kind]).tensors
        assert {t.name: t.shape.tolist() for t in tensors} == shapes
        assert {t.name: t.tensor_type.name for t in tensors} == {
            name: "F32" if len(shape) == 1 else matrix_type for name, shape in shapes.items()
        }


@pytest.mark.parametrize("kind, tolerance", [("f16", 0.02), ("q8_0", 0.25)])
def test_gguf_weights_give_the_merged_models_logits(
    merged_dir: Path, exported: dict[str, Path], tiny_tokenizer, kind: str, tolerance: float
) -> None:
    """Q/K rows left in Hugging Face's rotary order make the difference about 3 logit spreads on this model; float16
    rounding makes it under 0.01, Q8_0 under 0.1."""
    assert _logit_error(merged_dir, exported[kind], tiny_tokenizer) < tolerance


def test_untied_output_head_is_exported(tmp_path: Path, tiny_tokenizer) -> None:
    merged = _tiny_llama(tmp_path / "untied", tiny_tokenizer, tied=False)
    (f16,) = export_gguf(merged, tmp_path / "gguf", types=("f16",))
    names = {t.name for t in gguf.GGUFReader(f16).tensors}
    assert "output.weight" in names and f16.name == "untied-f16.gguf"
    assert _logit_error(merged, f16, tiny_tokenizer) < 0.02


def test_other_architectures_are_refused_by_name(tmp_path: Path, tiny_tokenizer) -> None:
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2'"):
        export_gguf(tmp_path / "gpt2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_gguf_is_not_overwritten(merged_dir: Path, exported: dict[str, Path]) -> None:
    before = exported["f16"].read_bytes()
    with pytest.raises(FileExistsError):
        export_gguf(merged_dir, exported["f16"].parent, types=("f16",))
    assert exported["f16"].read_bytes() == before


def test_pre_tokenizers_are_named_as_llama_cpp_names_them_or_refused() -> None:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bpe = {"model": {"type": "BPE", "byte_fallback": False}, "normalizer": None}
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert llama_cpp_pre_tokenizer(bpe | {"pre_tokenizer": byte_level}) == "gpt-2"
    assert llama_cpp_pre_tokenizer(bpe | {"pre_tokenizer": smollm}) == "smollm"
    for unknown in (byte_level | {"add_prefix_space": True}, {"type": "Metaspace", "replacement": "▁"}):
        with pytest.raises(ValueError, match="no llama.cpp pre-tokenizer"):
            llama_cpp_pre_tokenizer(bpe | {"pre_tokenizer": unknown})
    with pytest.raises(ValueError, match="byte-level BPE"):
        llama_cpp_pre_tokenizer({"model": {"type": "Unigram"}, "pre_tokenizer": byte_level})


_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def render_go_template(template: str, values: dict[str, Any]) -> str:
    """What Go's text/template makes of text, `{{ .Field }}` and `{{ range .Field }}...{{ end }}` (with `{{-`/`-}}`
    trimming); any other action fails, so a Modelfile using more than this is not passed unchecked."""
    parts: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for action in _ACTION.finditer(template):
        text = template[position : action.start()]
        text = text.lstrip() if trim_next else text
        parts += [("text", text.rstrip() if action.group(1) else text), ("action", action.group(2))]
        position, trim_next = action.end(), bool(action.group(3))
    tail = template[position:]
    parts.append(("text", tail.lstrip() if trim_next else tail))

    def run(start: int, dot: dict[str, Any]) -> tuple[str, int]:
        out, i = "", start
        while i < len(parts):
            kind, value = parts[i]
            if kind == "text":
                out += value
            elif value == "end":
                return out, i
            elif value.startswith("range ."):
                end = None
                for item in dot[value.removeprefix("range .")]:
                    text, end = run(i + 1, item)
                    out += text
                i = end if end is not None else run(i + 1, {})[1]
            elif re.fullmatch(r"\.\w+", value):
                out += str(dot[value[1:]])
            else:
                raise AssertionError(f"the test's Go template renderer does not know {{{{ {value} }}}}")
            i += 1
        return out, i

    return run(0, values)[0]


def _ollama_render(template: str, messages: list[dict[str, str]]) -> str:
    """Ollama passes a request's messages, the Modelfile's SYSTEM first, as .Messages with Role and Content."""
    return render_go_template(template, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})


def _modelfile(text: str) -> dict[str, Any]:
    """The commands of a Modelfile as Ollama's parser reads them: triple-quoted values verbatim."""
    quoted = dict(re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""$', text, re.S | re.M))
    parameters = dict(re.findall(r"^PARAMETER (\w+) (.+)$", text, re.M))
    return {"FROM": re.search(r"^FROM (.+)$", text, re.M).group(1), **quoted, **parameters}


@pytest.mark.parametrize("chat_template", [None, SMOLLM2_TEMPLATE], ids=["chatml", "smollm2"])
def test_modelfile_template_renders_the_training_prompt(tiny_model_dir: Path, chat_template: str | None) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = chat_template or tokenizer.chat_template
    template = _modelfile(ollama_modelfile(Path("m-q8_0.gguf"), tokenizer, SETTINGS, "Be me."))["TEMPLATE"]
    conversations = [
        chat_messages(DEFAULT_SYSTEM_PROMPT, "What does the mechanic oil first?"),
        chat_messages("Be me.", " Q:\n  why?  ", "Because.") + [{"role": "user", "content": "And then?"}],
    ]
    for messages in conversations:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert _ollama_render(template, messages) == expected


def test_modelfile_has_the_stop_system_prompt_and_saved_decoding_defaults(
    merged_dir: Path, exported: dict[str, Path]
) -> None:
    tokenizer = load_tokenizer(merged_dir)
    path = write_ollama_modelfile(exported["q8_0"], tokenizer, load_generation_settings(merged_dir), "Be me.\nAlways.")
    assert path == exported["q8_0"].with_suffix(".Modelfile")
    commands = _modelfile(path.read_text())
    assert commands["FROM"] == f"./{exported['q8_0'].name}" and (path.parent / exported["q8_0"].name).is_file()
    assert commands["SYSTEM"] == "Be me.\nAlways."
    assert commands["stop"] == f'"{tokenizer.eos_token}"' == '"<|im_end|>"'
    assert float(commands["temperature"]) == SETTINGS.temperature
    assert float(commands["top_p"]) == SETTINGS.top_p
    assert int(commands["num_predict"]) == SETTINGS.max_new_tokens
    assert int(commands["seed"]) == SETTINGS.seed
    assert int(commands["top_k"]) == 0  # Ollama's default top-k of 40 is not in the evaluated decoding
    assert not {"repeat_penalty", "repeat_last_n"} & set(commands)  # not what no_repeat_ngram_size does


@pytest.mark.parametrize(
    "chat_template",
    [
        # content trimmed: a Go template cannot repeat it
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        # each role wrapped its own way
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}"
        "{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}",
    ],
    ids=["trimmed", "per-role"],
)
def test_a_template_ollama_cannot_repeat_is_refused(tiny_model_dir: Path, chat_template: str) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = chat_template
    with pytest.raises(ValueError, match="chat template"):
        ollama_template(tokenizer)
