"""Versioned prompt templates. Bump `version` whenever the wording changes: it feeds the cache key
and the code version of the assets that use the template, so stale outputs are recomputed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from string import Template

import yaml

_FOLDER = Path(__file__).parent


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: str
    user: str
    examples: tuple[tuple[str, str], ...] = ()  # few-shot (user, assistant) turns; small models follow them best
    response_schema: str = ""  # JSON schema of the answer (as JSON), for providers with structured output

    def render(self, **variables: str) -> list[dict[str, str]]:
        """Chat messages with `$name` placeholders filled; a missing variable is an error, not a blank."""
        fill = lambda text: Template(text).substitute(variables).strip()  # noqa: E731
        messages = [{"role": "system", "content": fill(self.system)}]
        for user, assistant in self.examples:
            messages += [{"role": "user", "content": fill(user)}, {"role": "assistant", "content": fill(assistant)}]
        return messages + [{"role": "user", "content": fill(self.user)}]

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


@lru_cache(maxsize=None)
def load_prompt(name: str) -> PromptTemplate:
    path = _FOLDER / f"{name}.yaml"
    if not path.exists():
        raise KeyError(f"no prompt template '{name}' in {_FOLDER}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return PromptTemplate(
        name=data["name"],
        version=str(data["version"]),
        system=data["system"],
        user=data["user"],
        examples=tuple((turn["user"], turn["assistant"]) for turn in data.get("examples", [])),
        response_schema=json.dumps(data["response_schema"], sort_keys=True) if data.get("response_schema") else "",
    )
