"""Stand-ins for tests and benchmarks, shipped so both use the same ones.

- `build_tiny_model`: a 2-layer random Llama with a small ChatML tokenizer, built in seconds, loaded
  through the real code path (no hub).
- `ScriptedLLM`: answers shaped like a good model's, derived from the prompt itself, counting calls.
- `LocalDaemon`: the notes sensor and the automation sensor ticking in this process, with their
  requests executed in-process — what `dagster dev`'s daemon does, minus the waiting.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fine_tune_dag.core.llm.types import LLMClient, LLMRequest, LLMResult
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy

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

SAMPLE_TOPICS = ["chains", "bees", "the river", "the workshop", "wind", "brakes", "saddles", "honey", "winter", "tools"]


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


def write_sample_notes(folder: Path, count: int = len(SAMPLE_TOPICS), start: int = 0) -> list[Path]:
    """Markdown notes `note-<i>.md` of one to four paragraphs, half with front matter."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(start, start + count):
        topic = SAMPLE_TOPICS[i % len(SAMPLE_TOPICS)]
        body = "\n\n".join(
            f"Here is the thing about {topic} (note {i}): paragraph {p} says something true enough. "
            + f"Small tools, small wins, and {topic} teach patience. " * 3
            for p in range(1 + i % 4)
        )
        front = f"---\ntitle: On {topic}\ntags: [workshop]\n---\n" if i % 2 == 0 else ""
        path = folder / f"note-{i:02d}.md"
        path.write_text(front + f"# On {topic}\n\n{body}\n", encoding="utf-8")
        written.append(path)
    return written


class ScriptedLLM:
    """Deterministic answers shaped like a good model's; `calls` counts requests that reached it."""

    provider = "scripted"
    model_name = "scripted-1"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def complete(self, requests: list[LLMRequest]) -> list[LLMResult]:
        self.calls.update(r.template for r in requests)
        answers = [self._answer(r.template, r.messages[-1][1]) for r in requests]
        return [
            LLMResult(
                answer, input_tokens=sum(len(c.split()) for _, c in r.messages), output_tokens=len(answer.split())
            )
            for r, answer in zip(requests, answers)
        ]

    @staticmethod
    def _answer(template: str, prompt: str) -> str:
        if template == "pairwise_judge":
            return "A"
        if template == "chunk_boundaries":
            count = len(re.findall(r"^\[\d+\]", prompt, re.MULTILINE))
            return "1 | opening\n" + (f"{count // 2 + 1} | later part" if count > 1 else "")
        passage = prompt.split("\n", 1)[-1] if template == "grounded_qa" else prompt
        first = re.split(r"(?<=[.!?])\s", passage.strip(), maxsplit=1)[0]
        subject = " ".join(re.findall(r"[A-Za-z]+", first)[-3:])
        if template == "grounded_qa":
            return f"Sure!\nQ: What do you say about {subject}?\nA: {first}"
        return f"What is your view on {subject} and why?"


SCRIPTED_LLM = ScriptedLLM()


class ScriptedLLMResource(LLMResource):
    """The LLM resource with `SCRIPTED_LLM` behind it (shared by every run in this process)."""

    def client(self) -> LLMClient:
        return SCRIPTED_LLM


def scripted_definitions(
    notes: Path, data: Path, base_model: Path, policy: AutomationPolicy | None = None, **options: str
) -> dg.Definitions:
    """The project's graph over these folders, with the scripted LLM and a local base model;
    `options` go to `build_definitions` (sweep_file, executor, artifacts_url)."""
    paths = ProjectPaths(notes_dir=str(notes), data_dir=str(data))
    return build_definitions(
        str(notes),
        str(data),
        base_model_ref=str(base_model),
        llm=ScriptedLLMResource(paths=paths),
        policy=policy,
        **options,
    )


@dataclass
class DaemonRun:
    assets: tuple[str, ...]
    partition: str | None
    success: bool
    trigger: str


@dataclass
class LocalDaemon:
    """Ticks `new_notes_sensor` and the automation conditions and executes what they request, in order."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    run_config: dict = field(default_factory=dict)
    log_level: str = "WARNING"
    runs: list[DaemonRun] = field(default_factory=list)
    _sensor_cursor: str | None = None
    _automation_cursor: object = None

    def tick_sensor(self) -> list[DaemonRun]:
        sensor = self.defs.resolve_sensor_def("new_notes_sensor")
        with dg.build_sensor_context(
            instance=self.instance, cursor=self._sensor_cursor, definitions=self.defs, resources=self.defs.resources
        ) as context:
            result = sensor(context)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        self._sensor_cursor = result.cursor
        job_runs = []
        for request in result.run_requests:
            job = self.defs.resolve_job_def(request.job_name)
            keys = tuple(k.to_user_string() for k in job.asset_layer.executable_asset_keys)
            job_runs.append(self._execute(job, keys, request.partition_key, "new_notes_sensor"))
        return job_runs

    def tick_automation(self) -> list[DaemonRun]:
        result = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self._automation_cursor)
        self._automation_cursor = result.cursor
        by_partition: dict[str | None, list[dg.AssetKey]] = {}
        for key in self.defs.resolve_asset_graph().get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
                by_partition.setdefault(partition, []).append(key)
        job = self.defs.resolve_implicit_global_asset_job_def()
        return [
            self._execute(job, tuple(k.to_user_string() for k in keys), partition, "automation_sensor", keys)
            for partition, keys in sorted(by_partition.items(), key=lambda item: item[0] or "")
        ]

    def settle(self, max_ticks: int = 10) -> list[DaemonRun]:
        """Tick until neither the sensor nor the automation asks for anything more.

        The automation ticks first, as the daemon starts with the UI before any note run finishes.
        """
        executed = [] if self._automation_cursor else self.tick_automation()
        for _ in range(max_ticks):
            step = self.tick_sensor() + self.tick_automation()
            if not step:
                return executed
            executed += step
        raise RuntimeError(f"still requesting runs after {max_ticks} ticks: {executed[-3:]}")

    def _execute(
        self,
        job: dg.JobDefinition,
        assets: tuple[str, ...],
        partition: str | None,
        trigger: str,
        selection: list[dg.AssetKey] | None = None,
    ) -> DaemonRun:
        config = {name: value for name, value in self.run_config.get("ops", {}).items() if name in assets}
        result = job.execute_in_process(
            run_config={"ops": config, "loggers": {"console": {"config": {"log_level": self.log_level}}}},
            instance=self.instance,
            partition_key=partition,
            asset_selection=selection,
            raise_on_error=False,
            tags={"dagster/sensor_name": trigger},
        )
        run = DaemonRun(assets, partition, result.success, trigger)
        self.runs.append(run)
        return run
