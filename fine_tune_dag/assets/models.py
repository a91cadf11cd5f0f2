"""base_model: the model to fine-tune, as a local Hugging Face folder."""

import dagster as dg

from fine_tune_dag.assets.common import reports_peak_memory
from fine_tune_dag.core.models.resolution import ModelResolutionError
from fine_tune_dag.resources.models import ModelsResource


@dg.asset(
    group_name="training",
    kinds={"pytorch"},
    code_version="models-1",
)
@reports_peak_memory
def base_model(context: dg.AssetExecutionContext, models: ModelsResource) -> dg.MaterializeResult:
    """Converted (GGUF), downloaded (Hub) or found (local folder) once, then loaded from disk."""
    from fine_tune_dag.core.models.loading import count_parameters, load_causal_lm, load_tokenizer

    try:
        resolved = models.resolve()
    except ModelResolutionError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    tokenizer = load_tokenizer(resolved.path)
    model = load_causal_lm(resolved.path)
    context.log.info(f"base model {resolved.reference} ready at {resolved.path}")
    return dg.MaterializeResult(
        metadata={
            "model": resolved.reference,
            "source": resolved.source,
            "path": dg.MetadataValue.path(str(resolved.path)),
            "architecture": model.config.model_type,
            "parameters": count_parameters(model),
            "vocab_size": len(tokenizer),
            "chat_template_present": tokenizer.chat_template is not None,
            "eos_token": str(tokenizer.eos_token),
            "pad_token": str(tokenizer.pad_token),
        }
    )
