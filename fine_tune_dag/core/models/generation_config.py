"""The decoding settings saved with each adapter, apart from generation itself: the command line reads their
defaults and help without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationSettings:
    """How an adapter answers unless told otherwise, saved beside it. Greedy decoding with no repetition
    control and a long limit made small models repeat one sentence until the limit; these defaults do not."""

    max_new_tokens: int = field(
        default=160, metadata={"help": "answer length limit in tokens: a note's, not an essay's"}
    )
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; 0: greedy"})
    top_p: float = field(default=0.9, metadata={"help": "sample from the smallest token set with this probability"})
    no_repeat_ngram_size: int = field(
        default=3,  # 6 let a 135M model loop in a third of its notes ("I looked at the …" with one word changed)
        metadata={"help": "no run of this many tokens twice in the answer (the prompt may be quoted); 0: off"},
    )
    seed: int = field(default=0, metadata={"help": "seeds sampling: the same question and settings, the same answer"})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"generation settings out of range: {self} (max_new_tokens >= 1, temperature >= 0, "
                "0 < top_p <= 1, no_repeat_ngram_size >= 0)"
            )
