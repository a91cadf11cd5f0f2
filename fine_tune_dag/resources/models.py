import dagster as dg

from fine_tune_dag.core.models.bundled import BUNDLED_MODEL
from fine_tune_dag.core.models.resolution import ResolvedModel, resolve_model
from fine_tune_dag.resources.paths import ProjectPaths


class ModelsResource(dg.ConfigurableResource):
    """The base model to fine-tune: the bundled SmolLM2, a Hugging Face Hub id, or a local folder."""

    base_model: str = BUNDLED_MODEL
    paths: dg.ResourceDependency[ProjectPaths]

    def resolve(self) -> ResolvedModel:
        return resolve_model(self.base_model, self.paths.models)
