"""Where finished adapters and reports are mirrored, so pods and people off this disk can use them."""

import dagster as dg
from pydantic import Field

from fine_tune_dag.core.store.artifacts import ArtifactStore


class ArtifactStoreResource(dg.ConfigurableResource):
    """Object storage for artifact folders; credentials come from the environment, never from config."""

    url: str = Field(
        default="",
        description="fsspec URL such as s3://bucket/prefix or gs://bucket/prefix; empty keeps artifacts on local disk only.",
    )

    def get(self) -> ArtifactStore:
        return ArtifactStore(self.url)
