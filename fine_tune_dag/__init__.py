"""fine_tune_dag: a Dagster asset graph that fine-tunes an open model on a person's own notes."""

from fine_tune_dag.core.common.memory import bound_kernel_caches

bound_kernel_caches()
