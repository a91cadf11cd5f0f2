"""When the graph acts on its own: how the sensor batches notes, when to retrain, when to promote."""

import dagster as dg
from pydantic import Field

from fine_tune_dag.core.evaluation.gate import PromotionPolicy


class AutomationPolicy(dg.ConfigurableResource):
    """Read when definitions are built (sensor, condition, schedule) and by the promotion gate at run time."""

    notes_per_tick: int = Field(default=100, description="most note files the sensor hashes and requests per tick")
    settle_seconds: float = Field(
        default=10.0, description="a file untouched this long (or unchanged over two ticks) is complete"
    )
    retrain_min_new_examples: int = Field(
        default=20, description="train-split growth since the champion's (and last adapter's) data that retrains"
    )
    retrain_on_deletion: bool = Field(
        default=True,
        description="retrain when notes the last adapter trained on left the train split (deleted, forgotten or "
        "rejected), so it stops knowing them",
    )
    retrain_cron: str = Field(default="0 3 * * *", description="retrain_schedule: when to catch smaller growth")
    retrain_timezone: str = "UTC"
    champion_margin: float = Field(
        default=PromotionPolicy.champion_margin,
        description="per-token NLL (nats) on voice and answers by which a newcomer may trail the champion, at the "
        "upper bound of its paired interval (0.05: about 5% perplexity)",
    )
    min_test_notes: int = Field(
        default=PromotionPolicy.min_test_notes, description="held-out notes below which an interval decides nothing"
    )
    promote_when_uncertain: bool = Field(
        default=PromotionPolicy.promote_when_uncertain,
        description="promote when every comparison that held the newcomer back was within noise or short of notes",
    )
    promote_always: bool = Field(
        default=PromotionPolicy.promote_always,
        description="every evaluated adapter becomes the champion whatever the evidence, for trying things out "
        "(the report and the check still say what the gate found)",
    )
    max_shared_words: int = Field(
        default=PromotionPolicy.max_shared_words,
        description="a generation sharing a longer run of words with the train split regurgitates",
    )
    max_memorized_share: float = Field(
        default=PromotionPolicy.max_memorized_share, description="largest share of generations that may regurgitate"
    )

    def promotion(self) -> PromotionPolicy:
        return PromotionPolicy(
            self.champion_margin,
            self.min_test_notes,
            self.promote_when_uncertain,
            self.promote_always,
            self.max_shared_words,
            self.max_memorized_share,
        )
