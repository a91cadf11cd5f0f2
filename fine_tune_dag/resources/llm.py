"""The LLM every asset talks to; which provider answers is configuration, not asset code."""

from functools import lru_cache
from pathlib import Path

import dagster as dg

from fine_tune_dag.core.llm import CachedLLM, LLMClient, LocalLLM
from fine_tune_dag.core.models import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.warehouse import Warehouse
from fine_tune_dag.resources.paths import ProjectPaths

PROVIDERS = ("local",)


@lru_cache(maxsize=2)
def _local_client(model_path: Path, device: str, dtype: str, batch_size: int, seed: int) -> LocalLLM:
    """One loaded model per process, shared by every partition a run materializes."""
    return LocalLLM(model_path, device=device, dtype=dtype, batch_size=batch_size, seed=seed)


class LLMResource(dg.ConfigurableResource):
    provider: str = "local"
    model: str = BUNDLED_MODEL
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    paths: dg.ResourceDependency[ProjectPaths]

    def client(self) -> LLMClient:
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown LLM provider '{self.provider}'; available: {', '.join(PROVIDERS)}")
        resolved = resolve_model(self.model, self.paths.models)
        return _local_client(resolved.path, self.device, self.dtype, self.batch_size, self.seed)

    def cached(self, warehouse: Warehouse, context: dg.AssetExecutionContext) -> CachedLLM:
        """A fresh usage counter per asset materialization, over the shared client, cache and request log."""
        origin = {
            "run_id": context.run.run_id,
            "asset": context.asset_key.to_user_string(),
            "partition": context.partition_key if context.has_partition_key else "",
        }
        return CachedLLM(self.client(), warehouse, chunk_size=self.batch_size, origin=origin)
