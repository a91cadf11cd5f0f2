"""How an adapter is trained, apart from the training itself: the command line and the cost estimate read
these defaults without loading torch or peft."""

from __future__ import annotations

from dataclasses import dataclass, field

from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_HELP


@dataclass(frozen=True)
class TrainingSettings:
    epochs: float = field(default=2.0, metadata={"help": "passes over the train split (max_steps > 0 overrides)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides epochs"})
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate of the adapter (AdamW)"})
    lr_scheduler: str = field(
        default="linear", metadata={"help": "transformers scheduler name: linear, cosine, constant_with_warmup, …"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps spent warming the learning rate up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the adapter weights"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients are clipped to this norm"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch"})
    target_modules: tuple[str, ...] = field(
        default=("all-linear",), metadata={"help": "module names to adapt, or 'all-linear'"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_seq_length: int = field(
        default=512,
        metadata={"help": "longer examples are dropped (and counted), never cut: a cut answer would lose its EOS"},
    )
    seed: int = field(default=42, metadata={"help": "seeds data order, held-out choice, dropout and initialisation"})
    device: str = field(default="auto", metadata={"help": "auto, cuda, mps or cpu"})
    dtype: str = field(
        default="auto",
        metadata={"help": "base weights: auto, bfloat16 or float32; the adapter always trains in float32"},
    )
    logging_steps: int = field(
        default=5, metadata={"help": "how often progress is logged; metrics are recorded every step"}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "share of the train split held out to watch overfitting; 0: none"}
    )
    eval_steps: int = field(
        default=0, metadata={"help": "evaluate every n optimizer steps; 0: once an epoch (and always at the end)"}
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "stop after n evaluations without a better eval loss; 0: never"}
    )
    checkpoint_steps: int = field(
        default=25, metadata={"help": "save resumable state every n optimizer steps; 0: never"}
    )
    mix_qa: float = field(default=1.0, metadata={"help": "weight of the synthesized Q&A pairs in the mix (2: twice)"})
    mix_pretrain: float = field(
        default=1.0, metadata={"help": "weight of continued pretraining on the author's passages (loss on every token)"}
    )
    mix_write: float = field(
        default=1.0, metadata={"help": "weight of the 'write a note about …' → verbatim passage tasks"}
    )
    mix_continue: float = field(
        default=1.0, metadata={"help": "weight of the 'continue this' → rest of the passage tasks"}
    )
    mix_retrieval_qa: float = field(
        default=1.0,
        metadata={"help": "weight of Q&A with the source passage among distractors in context (for tuned + retrieval)"},
    )
    retrieval_distractors: int = field(
        default=2, metadata={"help": "passages of other train notes beside the right one in retrieval-augmented Q&A"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute layer activations in backward: less memory for longer sequences, slower steps "
            "(turned on by itself when the batch would not fit memory_budget_gb)"
        },
    )
    memory_budget_gb: float | None = field(
        default=None,
        metadata={
            "help": "the most the training process may hold: above it, gradient checkpointing and then smaller "
            f"micro-batches (the same examples per step) keep the activations within it; {MEMORY_BUDGET_HELP}"
        },
    )
