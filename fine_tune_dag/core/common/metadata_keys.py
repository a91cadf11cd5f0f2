"""Names of the figures one stage reports (Dagster metadata, registry columns) that another part reads
(automation conditions, the schedule): one constant for both sides."""

DATASET_VERSION = "dataset_version"  # dataset_splits
TRAIN_PAIRS = "train_pairs"  # dataset_splits: pairs in the train split
TRAIN_NOTES_LOST = "train_notes_lost"  # dataset_splits: notes the newest adapter trained on that left the train side
DATASET_TRAIN_PAIRS = "dataset_train_pairs"  # lora_adapter, champion_adapter: train pairs the adapter saw
ADAPTER_VERSION = "version"  # lora_adapter, champion_adapter
PEAK_MEMORY_MIB = "peak_memory_mib"  # every heavy stage: the most its process held while it ran (bench/memory.py)
