"""The registry's adapters as vLLM sees them: one base model, every adapter version a LoRA module under its own
name, and the champion once more under the alias `champion`, the names `fine-tune-dag serve` uses.

vLLM reads `--lora-modules` only at start; moving `champion` later goes through its runtime endpoints
(`POST /v1/unload_lora_adapter`, then `POST /v1/load_lora_adapter`), which vLLM serves only with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Nothing here imports vLLM or Dagster: the promotion hook in
deploy/vllm/ runs it anywhere the warehouse can be read."""

from __future__ import annotations

from collections.abc import Mapping

CHAMPION = "champion"
BASE = "base"
UNLOAD_PATH = "/v1/unload_lora_adapter"
LOAD_PATH = "/v1/load_lora_adapter"


def champion_path(adapters: Mapping[str, str], champion: str) -> str:
    """The champion's folder; a champion missing from the adapters would serve nothing, so it is refused."""
    if champion not in adapters:
        raise ValueError(f"champion '{champion}' is not one of the adapters: {', '.join(adapters) or 'none'}")
    return adapters[champion]


def lora_modules(adapters: Mapping[str, str], champion: str) -> list[str]:
    """`name=path` for every version, oldest first as given, then `champion=<champion's path>`."""
    alias = f"{CHAMPION}={champion_path(adapters, champion)}"
    return [f"{version}={path}" for version, path in adapters.items()] + [alias]


def serve_args(
    base_model: str, adapters: Mapping[str, str], champion: str, port: int = 8000, max_lora_rank: int = 16
) -> list[str]:
    """The arguments after `vllm serve`: the base model served as `base` on `port`, LoRA on, every module loaded.

    `--max-loras` is how many adapters one batch may mix; all of them, so no request waits for a swap.
    `--max-lora-rank` must be at least the largest rank trained (`lora_r`, 16 by default)."""
    modules = lora_modules(adapters, champion)
    return [
        base_model,
        "--served-model-name",
        BASE,
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(len(modules)),
        "--max-lora-rank",
        str(max_lora_rank),
        "--lora-modules",
        *modules,
    ]


def unload_champion_body() -> dict[str, str]:
    """The body of `POST /v1/unload_lora_adapter` that frees the alias."""
    return {"lora_name": CHAMPION}


def load_champion_body(adapters: Mapping[str, str], champion: str) -> dict[str, str]:
    """The body of `POST /v1/load_lora_adapter` that points the alias at the new champion's folder."""
    return {"lora_name": CHAMPION, "lora_path": champion_path(adapters, champion)}


def promotion_requests(adapters: Mapping[str, str], champion: str) -> list[tuple[str, dict[str, str]]]:
    """(path, JSON body) in the order a running server needs them to move `champion` without a restart."""
    return [(UNLOAD_PATH, unload_champion_body()), (LOAD_PATH, load_champion_body(adapters, champion))]
