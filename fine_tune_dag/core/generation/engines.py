"""Opening the engine a stage generates with: the chosen one, or transformers' `generate` with the reason why not.

Every conversion an engine needs is made here, when it opens, so a conversion that fails falls back before the
first prompt rather than halfway through a run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from fine_tune_dag.core.generation.base import (
    EngineChoice,
    EngineSettings,
    EngineUnavailable,
    GenerationEngine,
    choose_engine,
)

LOGGER = logging.getLogger(__name__)


def open_engine(
    base_dir: Path,
    adapters: Mapping[str, Path],
    tokenizer: Any,
    settings: EngineSettings | None = None,
    device: str = "cpu",
    torch_model: Callable[[], Any] | None = None,
    pinned: tuple[str | None, ...] = (None,),
) -> GenerationEngine:
    """The engine `settings` choose for `device`, with the base model and `adapters` (name: folder) ready.
    Where it cannot run, the fallback: `torch_model()` (the loaded model with the same adapters; loaded here
    when not given) under transformers' `generate`, its `choice.reason` naming the model and what failed."""
    settings = settings or EngineSettings()
    choice = choose_engine(settings.engine, device)
    try:
        if choice.engine == "openvino":
            from fine_tune_dag.core.generation.openvino import OpenVINOEngine

            def scorer() -> Any:  # the torch model, loaded the first time the n-gram ban needs its scores
                return _transformers(base_dir, adapters, tokenizer, settings, device, torch_model, choice)

            engine: GenerationEngine = OpenVINOEngine(
                base_dir,
                adapters,
                tokenizer.eos_token_id,
                settings.precision,
                settings.max_batch,
                pinned=pinned,
                scorer=scorer,
            )
            for adapter in (None, *adapters):
                engine.convert(adapter)  # type: ignore[attr-defined]
        elif choice.engine == "vllm":
            from fine_tune_dag.core.generation.vllm import VLLMEngine

            engine = VLLMEngine(base_dir, adapters, tokenizer.eos_token_id)
        else:
            return _transformers(base_dir, adapters, tokenizer, settings, device, torch_model, choice)
    except EngineUnavailable as error:
        LOGGER.warning("%s; generating with transformers' generate instead", error)
        fallback = EngineChoice("transformers", f"fallback from {choice.engine}: {error}")
        return _transformers(base_dir, adapters, tokenizer, settings, device, torch_model, fallback)
    engine.choice = EngineChoice(choice.engine, choice.reason, engine.choice.precision)
    return engine


def _transformers(
    base_dir: Path,
    adapters: Mapping[str, Path],
    tokenizer: Any,
    settings: EngineSettings,
    device: str,
    torch_model: Callable[[], Any] | None,
    choice: EngineChoice,
) -> GenerationEngine:
    from fine_tune_dag.core.generation.transformers import TransformersEngine
    from fine_tune_dag.core.models.loading import load_causal_lm, select_dtype, with_adapters

    if torch_model is not None:
        model = torch_model()
    else:
        model = load_causal_lm(Path(base_dir), device, select_dtype("auto", device)).eval()
        model = with_adapters(model, dict(adapters)) if adapters else model
    return TransformersEngine(model, tokenizer, settings.max_batch, choice.reason)
