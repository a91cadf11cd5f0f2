"""The one chat-rendering function shared by training, evaluation and generation.

Template drift between training and inference is the most reported cause of a fine-tune that
"does nothing"; everything that turns messages into token ids goes through `render_prompt_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

DEFAULT_SYSTEM_PROMPT = "You are the author of these notes. Answer in your own voice, from what you have written."

Message = dict[str, str]


def chat_messages(system: str, user: str, assistant: str | None = None) -> list[Message]:
    """Messages with an explicit system turn, so no template inserts its own default one."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages


def text_messages(text: str) -> list[Message]:
    """Continued pretraining on the author's own text: no template and no question, every token learned
    (see `render_training_example`)."""
    return [{"role": "assistant", "content": text}]


def render_prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of the conversation up to and including the assistant header."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt positions; answer tokens and the final EOS are learned
    prompt_length: int


def render_training_example(tokenizer: Any, messages: Sequence[Message]) -> TokenizedExample:
    """Prompt ids from `render_prompt_ids`, then the answer and EOS.

    The label mask comes from the prompt length, never from searching for a response marker, and
    EOS is appended by id so it is learned even when the pad token is the same token. A lone assistant
    message (`text_messages`) has no prompt at all: plain text, every token learned.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training example ends with the assistant's answer")
    prompt_ids = render_prompt_ids(tokenizer, messages[:-1]) if len(messages) > 1 else []
    answer_ids = list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
    answer_ids.append(tokenizer.eos_token_id)
    return TokenizedExample(
        input_ids=prompt_ids + answer_ids,
        labels=[-100] * len(prompt_ids) + answer_ids,
        prompt_length=len(prompt_ids),
    )
