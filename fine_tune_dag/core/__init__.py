"""Pure logic, one subpackage per stage, no Dagster: common, ingest, synthesis, models, retrieval, dataset, store,
privacy, export, generation, llm, training, evaluation, serving, workflows; each imports only those before it."""
