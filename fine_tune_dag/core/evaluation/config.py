"""The evaluation's and the preference candidates' settings, apart from the work itself: torch-free, so Dagster config and
the command line read their defaults and help without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_HELP


@dataclass(frozen=True)
class EvaluationSettings:
    max_examples: int = field(default=64, metadata={"help": "test items evaluated (all of them when fewer)"})
    max_new_tokens: int = field(default=96, metadata={"help": "answer length of each contender"})
    max_voice_items: int = field(
        default=64, metadata={"help": "held-out passages whose perplexity measures voice (all of them when fewer)"}
    )
    max_written_notes: int = field(
        default=64,
        metadata={
            "help": "held-out passages each writing contender writes a note beside, for authorship, the blind test, "
            "loops and memorization (all of them when fewer)"
        },
    )
    written_max_new_tokens: int = field(
        default=512,
        metadata={
            "help": "the longest a written note may run, in tokens; below it, each note may run as long as the "
            "passage it stands beside, plus a sentence"
        },
    )
    few_shot_passages: int = field(
        default=3, metadata={"help": "the author's own train passages shown to the best-prompted base model"}
    )
    retrieval_top_k: int = field(default=3, metadata={"help": "passages retrieval puts in context"})
    batch_size: int = field(default=8, metadata={"help": "items per generation and scoring batch"})
    memory_budget_gb: float | None = field(
        default=None,
        metadata={
            "help": "the most the evaluation process may hold: fewer items go in a batch where more would not fit; "
            + MEMORY_BUDGET_HELP
        },
    )
    device: str = field(default="auto", metadata={"help": "auto, cuda, mps or cpu"})
    generation_engine: str = field(
        default="auto",
        metadata={
            "help": "what generates answers and notes: auto (OpenVINO GenAI on CPUs, vLLM on CUDA), openvino, "
            "vllm or transformers"
        },
    )
    dtype: str = field(
        default="float32",
        # bfloat16 rounds a batch of rows differently from one row: 56% of greedy answers at batch 16 matched
        # batch 1 on the bundled model, against all of them in float32 (bench/generation.py)
        metadata={"help": "weights: float32 (answers do not change with the batch size), bfloat16 or auto (faster)"},
    )
    seed: int = field(default=0, metadata={"help": "few-shot examples and bootstrap resampling"})
    min_held_out_notes: int = field(
        default=5,
        metadata={"help": "held-out notes below which the report says its intervals are rough and offers crossval"},
    )
    canary_audit: bool = field(
        default=False,
        metadata={
            "help": "the report's memorization section shows the exposure of the canaries planted on purpose with "
            "`fine-tune-dag plant-canaries` (the audit's default settings): turn it on only after planting them; "
            "nothing is ever planted in your notes unless you run that command"
        },
    )


@dataclass(frozen=True)
class PreferenceSettings:
    max_prompts: int = field(
        default=24, metadata={"help": "new comparisons per materialization; more come from the next one"}
    )
    max_new_tokens: int = field(default=96, metadata={"help": "answer length of each side"})
    low_temperature: float = field(default=0.7, metadata={"help": "the cooler of the champion's two samples"})
    high_temperature: float = field(default=1.2, metadata={"help": "the hotter of the champion's two samples"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    seed: int = field(default=0, metadata={"help": "which prompts, which pairing, and the sampling"})
    device: str = field(default="auto", metadata={"help": "auto, cuda, mps or cpu"})
    dtype: str = field(default="auto", metadata={"help": "base weights: auto, bfloat16 or float32"})
    generation_engine: str = field(
        default="auto", metadata={"help": "auto (OpenVINO GenAI on CPUs, vLLM on CUDA), openvino, vllm or transformers"}
    )
