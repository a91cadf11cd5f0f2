"""Who the author is in sources that mix their words with other people's: mailboxes and chat exports."""

import dagster as dg
from pydantic import Field

from fine_tune_dag.core.ingest.base import SourceSettings

_DEFAULTS = SourceSettings()


class SourcesResource(dg.ConfigurableResource):
    """Read by raw_notes. The addresses and names are personal: set them through EnvVar, so they never land in a
    run's configuration (`definitions_from_settings` does)."""

    author_addresses: str = Field(
        default="",
        description="comma-separated e-mail addresses you write from (EnvVar('FINE_TUNE_DAG_AUTHOR_ADDRESSES')): "
        "only messages sent from them are your text",
    )
    author_names: str = Field(
        default="",
        description="comma-separated names you appear under in chat exports (EnvVar('FINE_TUNE_DAG_AUTHOR_NAMES')): "
        "only their messages are your text",
    )
    conversation_gap_minutes: float = Field(
        default=_DEFAULTS.conversation_gap_minutes,
        description="a chat silence longer than this starts a new conversation",
    )

    def settings(self) -> SourceSettings:
        return SourceSettings.from_lists(self.author_addresses, self.author_names, self.conversation_gap_minutes)
