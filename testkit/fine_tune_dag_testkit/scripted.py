"""A deterministic LLM with answers shaped like a good model's, and the project's graph wired to one.

Each test gets its own `ScriptedLLM` (the `scripted_llm` fixture), so call counts never leak between tests.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import dagster as dg

from fine_tune_dag.core.common.llm_types import LLMClient, LLMRequest, LLMResult
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy


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
        if template == "pair_judge":  # a hosted teacher judges pairs by default: this one keeps every pair
            return "Score: 5\nReason: answered by the passage, in its words"
        if template == "chunk_boundaries":
            count = len(re.findall(r"^\[\d+\]", prompt, re.MULTILINE))
            return "1 | opening\n" + (f"{count // 2 + 1} | later part" if count > 1 else "")
        passage = prompt.split("\n", 1)[-1] if template == "grounded_qa" else prompt
        first = re.split(r"(?<=[.!?])\s", passage.strip(), maxsplit=1)[0]
        subject = " ".join(re.findall(r"[A-Za-z]+", first)[-3:])
        if template == "grounded_qa":
            return f"Sure!\nQ: What do you say about {subject}?\nA: {first}"
        return f"What is your view on {subject} and why?"


def scripted_llm_resource(llm: ScriptedLLM, paths: ProjectPaths) -> LLMResource:
    """The LLM resource with `llm` behind it: a subclass made for this one client, so runs in this process
    reach exactly the object the test counts calls on."""

    class ScriptedLLMResource(LLMResource):
        def client(self, warehouse: Warehouse | None = None) -> LLMClient:
            return llm

    return ScriptedLLMResource(paths=paths)


def scripted_definitions(
    notes: Path,
    data: Path,
    base_model: Path,
    policy: AutomationPolicy | None = None,
    llm: ScriptedLLM | None = None,
    **options: str,
) -> dg.Definitions:
    """The project's graph over these folders, with a scripted LLM (a fresh one unless given) and a local
    base model; `options` go to `build_definitions` (sweep_file, executor, artifacts_url)."""
    paths = ProjectPaths(notes_dir=str(notes), data_dir=str(data))
    return build_definitions(
        str(notes),
        str(data),
        base_model_ref=str(base_model),
        llm=scripted_llm_resource(llm or ScriptedLLM(), paths),
        policy=policy,
        **options,
    )
