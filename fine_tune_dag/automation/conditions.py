"""When training should run: the train split grew enough since the data the champion (and the
last adapter) was trained on. Read from materialization metadata, so the decision costs one
event-log lookup per asset and never opens the warehouse."""

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class TrainingDataGrowth:
    train_pairs: int  # in the newest dataset_splits
    dataset_version: str
    baseline: int  # train pairs the champion or the last adapter saw, whichever is more
    baseline_from: str

    @property
    def new_examples(self) -> int:
        return self.train_pairs - self.baseline

    def describe(self) -> str:
        return (
            f"train split {self.dataset_version or 'not built'} has {self.train_pairs} pairs, "
            f"{self.new_examples:+d} since {self.baseline_from} ({self.baseline})"
        )


def _latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def training_data_growth(instance: dg.DagsterInstance) -> TrainingDataGrowth:
    dataset = _latest_metadata(instance, "dataset_splits")
    baselines = [(0, "nothing trained yet")]
    for key, label in (("champion_adapter", "champion"), ("lora_adapter", "last adapter")):
        trained = _latest_metadata(instance, key)
        if trained:
            baselines.append((int(trained.get("dataset_train_pairs", 0)), f"{label} {trained.get('version', '?')}"))
    baseline, source = max(baselines, key=lambda b: b[0])
    return TrainingDataGrowth(
        int(dataset.get("train_pairs", 0)), str(dataset.get("dataset_version", "")), baseline, source
    )


class TrainingDataGrew(dg.AutomationCondition):
    """True once the train split holds `min_new_examples` more pairs than the newest trained-on data."""

    def __init__(self, min_new_examples: int) -> None:
        self.min_new_examples = min_new_examples

    @property
    def name(self) -> str:
        return "training_data_grew"

    @property
    def description(self) -> str:
        return (
            f"train split grew by at least {self.min_new_examples} pairs since the champion's and last adapter's data"
        )

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        growth = training_data_growth(context.asset_graph_view.instance)
        grew = growth.new_examples >= self.min_new_examples
        context.log.debug(growth.describe())
        return dg.AutomationResult(context, context.candidate_subset if grew else context.get_empty_subset())


def retrain_condition(min_new_examples: int) -> dg.AutomationCondition:
    """Grown enough, nothing upstream or itself in flight, and the last attempt did not fail (retried nightly)."""
    return (
        TrainingDataGrew(min_new_examples)
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.execution_failed()
    ).with_label(f"retrain when the train split grew by ≥ {min_new_examples}")


def dataset_condition() -> dg.AutomationCondition:
    """Rebuild after any note's pairs change, once no note run is in flight (a burst rebuilds once).

    Unlike `eager()`, it does not wait for missing partitions: a bad note stays missing for good.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("rebuild when any note's pairs changed")
