"""A merged model as GGUF files for llama.cpp and Ollama, and an Ollama Modelfile that prompts it as training did.

A fine-tune that misbehaves in Ollama is nearly always an export that differs from training: Q/K weights left in
Hugging Face's rotary layout (gibberish), special tokens not marked as control tokens or a BOS the training never
saw (odd first tokens), no stop at the turn end (never stopping), or a template that is not the training render.
Each is written here from the merged folder itself, with llama.cpp's own `gguf` package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import gguf
import numpy as np
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.models.generation_config import GenerationSettings

# file type name: (what general.file_type says, what a 2-D weight is stored as)
GGUF_TYPES: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}

_ARCH = gguf.MODEL_ARCH.LLAMA
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
# The Hugging Face pre-tokenizers whose splitting one of llama.cpp's `tokenizer.ggml.pre` types repeats exactly.
_PRE_TOKENIZERS: list[tuple[str, dict[str, Any]]] = [
    ("gpt-2", _BYTE_LEVEL),  # the GPT-2 regex alone; what transformers builds when it converts a GGUF vocabulary
    (
        "smollm",  # digits one by one, then the GPT-2 regex: SmolLM/SmolLM2 from the Hub
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    ),
]
# Message contents for reading a chat template's render: padded with spaces, since a Go template cannot trim them
_PROBES = (" \u2060S\u2060 ", " \u2060U1\u2060 ", " \u2060A1\u2060 ", " \u2060U2\u2060 ")


def _matches(spec: Any, found: Any) -> bool:
    """`found` has every key of `spec` with its value (options that only change offsets are not compared)."""
    if isinstance(spec, dict):
        return isinstance(found, dict) and all(k in found and _matches(v, found[k]) for k, v in spec.items())
    if isinstance(spec, list):
        return isinstance(found, list) and len(spec) == len(found) and all(map(_matches, spec, found))
    return spec == found


def llama_cpp_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization. A wrong one splits text differently from training
    (numbers, spaces), so an unknown pre-tokenizer or any normalizer is refused rather than guessed."""
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or tokenizer_json.get("normalizer") is not None:
        raise ValueError(
            "GGUF export supports byte-level BPE tokenizers without a normalizer (GPT-2 style, as SmolLM2's); "
            f"this one is {model.get('type')} with normalizer {tokenizer_json.get('normalizer')}"
        )
    found = tokenizer_json.get("pre_tokenizer")
    for name, spec in _PRE_TOKENIZERS:
        if _matches(spec, found):
            return name
    raise ValueError(f"no llama.cpp pre-tokenizer is known to split text like this one: {json.dumps(found)}")


def _llama_config(merged_dir: Path) -> PretrainedConfig:
    """The model's config, refused unless llama.cpp's `llama` architecture computes exactly what it describes."""
    config = AutoConfig.from_pretrained(merged_dir)
    if config.model_type != "llama":
        raise ValueError(
            f"GGUF export supports the Llama architecture (SmolLM2, Llama); {merged_dir} is '{config.model_type}' "
            f"({', '.join(config.architectures or [])})"
        )
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"GGUF export does not write RoPE scaling; {merged_dir} uses '{rope['rope_type']}'")
    if getattr(config, "mlp_bias", False):
        raise ValueError("GGUF export does not write MLP biases, which llama.cpp's llama architecture has not")
    return config


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rotary_pairs_adjacent(weights: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows reordered for llama.cpp (convert_hf_to_gguf's LlamaModel.permute): Hugging Face's rotary embedding
    pairs dimension i with i + d/2 of each head, llama.cpp's `llama` pairs 2i with 2i + 1."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _tensors(merged_dir: Path, config: PretrainedConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 weights in llama.cpp's layout) for every weight of the merged folder."""
    names = gguf.get_tensor_name_map(_ARCH, config.num_hidden_layers)
    files = sorted(merged_dir.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {merged_dir}: not a merged model folder")
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # llama.cpp uses token_embd when there is no output tensor
                gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ValueError(f"{file.name} has '{name}', which llama.cpp's llama architecture has no place for")
                data = weights.get_tensor(name).float().numpy()
                if ".q_proj." in name:
                    data = _rotary_pairs_adjacent(data, config.num_attention_heads)
                elif ".k_proj." in name:
                    data = _rotary_pairs_adjacent(data, config.num_key_value_heads)
                yield gguf_name, data


def _encoded(name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, Any]:
    """Norms and biases in float32, as llama.cpp computes them; 2-D weights in `qtype`, or float16 where a row is
    not a whole number of quantization blocks (convert_hf_to_gguf's rule)."""
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _vocabulary(merged_dir: Path, tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], gguf.SpecialVocab]:
    """Tokens and their types by id, padded to the embedding's rows, and merges, special ids and chat template.

    Special tokens are CONTROL, so llama.cpp reads `<|im_end|>` in a prompt as the one token training saw and
    never prints it. BOS and EOS are never added: training rendered every prompt with add_special_tokens=False."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"the tokenizer has id {max(by_id)}, past the model's {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.NORMAL
                if i not in added
                else gguf.TokenType.CONTROL
                if added[i].special
                else gguf.TokenType.USER_DEFINED
            )
    special = gguf.SpecialVocab(merged_dir, load_merges=True, n_vocab=vocab_size)
    special.special_token_ids = {
        kind: token_id
        for kind in ("bos", "eos", "unk", "pad")
        if (token_id := getattr(tokenizer, f"{kind}_token_id")) is not None
    }
    special.add_special_token = {"bos": False, "eos": False}
    special.chat_template = tokenizer.chat_template
    if "eos" not in special.special_token_ids or not special.merges:
        raise ValueError(f"the tokenizer in {merged_dir} lacks an EOS token or BPE merges")
    return tokens, types, special


def export_gguf(merged_dir: Path, out_dir: Path, types: Sequence[str] = ("f16", "q8_0")) -> list[Path]:
    """Write the merged Hugging Face model in `merged_dir` (see `inference.export_merged`) as one GGUF file per type,
    `<merged folder name>-<type>.gguf` in `out_dir`; returns their paths.

    Each file is written beside its final name and renamed, so a crash never leaves a half file; an existing file
    is not overwritten."""
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    unknown = [t for t in types if t not in GGUF_TYPES]
    if unknown or not types:
        raise ValueError(f"GGUF types must be some of {sorted(GGUF_TYPES)}, not {list(types)}")
    config = _llama_config(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    pre = llama_cpp_pre_tokenizer(json.loads((merged_dir / "tokenizer.json").read_text()))
    tokens, token_types, special = _vocabulary(merged_dir, tokenizer, config.vocab_size)
    paths = [out_dir / f"{merged_dir.name}-{t}.gguf" for t in types]
    if existing := [str(p) for p in paths if p.exists()]:
        raise FileExistsError(f"not overwriting {', '.join(existing)}: remove it or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    head_dim = _head_dim(config)
    for kind, path in zip(types, paths):
        file_type, qtype = GGUF_TYPES[kind]
        tmp = path.with_name(path.name + ".tmp")
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[_ARCH])
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(merged_dir.name)
            writer.add_file_type(file_type)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_vocab_size(config.vocab_size)
            writer.add_context_length(config.max_position_embeddings)
            writer.add_embedding_length(config.hidden_size)
            writer.add_block_count(config.num_hidden_layers)
            writer.add_feed_forward_length(config.intermediate_size)
            writer.add_head_count(config.num_attention_heads)
            writer.add_head_count_kv(config.num_key_value_heads)
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
            writer.add_rope_dimension_count(head_dim)
            writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
            writer.add_layer_norm_rms_eps(config.rms_norm_eps)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(pre)
            writer.add_token_list(tokens)
            writer.add_token_types(token_types)
            special.add_to_gguf(writer, quiet=True)
            for name, data in _tensors(merged_dir, config):
                encoded, stored_as = _encoded(name, data, qtype)
                writer.add_tensor(name, encoded, raw_dtype=stored_as)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            writer.close()
        os.replace(tmp, path)
    return paths


def ollama_template(tokenizer: Any) -> str:
    """The tokenizer's chat template as an Ollama (Go) template that renders the same text.

    The chat template is rendered once with marker contents; each message must read `<head><role><sep><content>
    <end>` with the same head, separator and end for every role, and the generation prompt must be the assistant's
    head. ChatML is `<|im_start|>`, `\\n`, `<|im_end|>\\n`. Anything else (a template that adds a date, trims or
    rewrites content) is refused: a Modelfile that prompts differently from training is the failure this prevents."""
    roles = ("system", "user", "assistant", "user")
    text = tokenizer.apply_chat_template(
        [{"role": role, "content": probe} for role, probe in zip(roles, _PROBES)],
        tokenize=False,
        add_generation_prompt=True,
    )
    pieces, rest = [], text
    for probe in _PROBES:
        before, found, rest = rest.partition(probe)
        if not found or probe in rest:
            raise ValueError(f"the chat template does not render each message's content once, as written: {text!r}")
        pieces.append(before)
    head, role, sep = pieces[0].rpartition(roles[0])
    end = pieces[1].removesuffix(head + roles[1] + sep)
    expected = [head + roles[0] + sep] + [end + head + r + sep for r in roles[1:]] + [end + head + "assistant" + sep]
    if not role or pieces + [rest] != expected:
        raise ValueError(
            f"the chat template is not one an Ollama template can repeat (the same wrapping for every role): {text!r}"
        )
    if any(marker in piece for piece in (head, sep, end) for marker in ("{{", '"""')):
        raise ValueError(f"the chat template's markup cannot be quoted in a Modelfile: {head!r} {sep!r} {end!r}")
    return (
        f"{{{{ range .Messages }}}}{head}{{{{ .Role }}}}{sep}{{{{ .Content }}}}{end}{{{{ end }}}}{head}assistant{sep}"
    )


def ollama_modelfile(
    gguf_file: Path, tokenizer: Any, settings: GenerationSettings, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> str:
    """An Ollama Modelfile for `gguf_file`: the training render as TEMPLATE, the training system prompt, a stop at
    the token training ended every answer with (EOS), and the adapter's decoding defaults.

    top_k 0 turns off Ollama's default top-k of 40, which the evaluated decoding does not have. No-repeat n-grams
    have no Ollama equivalent, so Ollama's repeat penalty is left as it is (a comment in the file says so)."""
    if '"""' in system_prompt or '"' in tokenizer.eos_token:
        raise ValueError('a Modelfile cannot quote a system prompt containing """ or an EOS token containing "')
    lines = [
        f"# Written by fine_tune_dag. Create the model with: ollama create NAME -f {Path(gguf_file).stem}.Modelfile",
        f"FROM ./{Path(gguf_file).name}",
        f'TEMPLATE """{ollama_template(tokenizer)}"""',
        f'SYSTEM """{system_prompt}"""',
        f'PARAMETER stop "{tokenizer.eos_token}"',
        f"PARAMETER temperature {settings.temperature}",
        f"PARAMETER top_p {settings.top_p}",
        "PARAMETER top_k 0",
        f"PARAMETER num_predict {settings.max_new_tokens}",
        f"PARAMETER seed {settings.seed}",
    ]
    if settings.no_repeat_ngram_size:
        lines.append(
            f"# no_repeat_ngram_size {settings.no_repeat_ngram_size} (the evaluated decoding) has no Ollama "
            "equivalent; Ollama's repeat_penalty stays at its default"
        )
    return "\n".join(lines) + "\n"


def write_ollama_modelfile(
    gguf_file: Path, tokenizer: Any, settings: GenerationSettings, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> Path:
    """`ollama_modelfile` written beside the GGUF file as `<gguf stem>.Modelfile`; returns its path."""
    path = Path(gguf_file).with_suffix(".Modelfile")
    path.write_text(ollama_modelfile(gguf_file, tokenizer, settings, system_prompt), encoding="utf-8")
    return path
