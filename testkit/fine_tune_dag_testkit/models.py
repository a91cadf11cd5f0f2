"""A tiny random Llama with a small ChatML tokenizer, built in seconds and loaded through the real code path."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TOKENIZER_TEXT = [
    "Here is the thing: a chain wears slowly, then all at once.",
    "The bees were quiet in the cold; the river was loud.",
    "Question: what does the mechanic oil first? Answer: the chain, always the chain.",
    "Q: Why ride slowly? A: Because the hill is long and the wind is honest.",
    "1 | repair and patience\n4 | bees in winter",
    "system user assistant You are the author of these notes.",
] * 20


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer whose pad token is its EOS, like the bundled model."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _TOKENIZER_TEXT,
        vocab_size=420,
        min_frequency=1,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
