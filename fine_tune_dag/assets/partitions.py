import dagster as dg

# One partition per note file; keys come from `core.ingest.note_partition_key`.
notes_partitions = dg.DynamicPartitionsDefinition(name="notes")
