"""When the graph acts on its own: how the sensor batches notes, when to retrain, when to promote."""

import dagster as dg
from pydantic import Field

from fine_tune_dag.core.store.promotion import PromotionPolicy


class AutomationPolicy(dg.ConfigurableResource):
    """Read when definitions are built (sensor, condition, schedule) and by the promotion gate at run time."""

    notes_per_tick: int = Field(default=100, description="most note files the sensor hashes and requests per tick")
    settle_seconds: float = Field(
        default=10.0, description="a file untouched this long (or unchanged over two ticks) is complete"
    )
    retrain_min_new_examples: int = Field(
        default=20, description="train-split growth since the champion's (and last adapter's) data that retrains"
    )
    retrain_cron: str = Field(default="0 3 * * *", description="retrain_schedule: when to catch smaller growth")
    retrain_timezone: str = "UTC"
    min_nll_improvement: float = Field(
        default=PromotionPolicy.min_nll_improvement, description="relative NLL gain a challenger needs"
    )
    metric_tolerance: float = Field(
        default=PromotionPolicy.metric_tolerance,
        description="largest worsening allowed in ROUGE-L, token F1 or the unsupported-content share",
    )
    min_test_items: int = Field(
        default=PromotionPolicy.min_test_items, description="held-out passages below which voice cannot decide"
    )
    promote_when_uncertain: bool = Field(
        default=PromotionPolicy.promote_when_uncertain,
        description="promote on too few test items or a voice interval that spans no difference",
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
            self.min_nll_improvement,
            self.metric_tolerance,
            self.min_test_items,
            self.promote_when_uncertain,
            self.max_shared_words,
            self.max_memorized_share,
        )
