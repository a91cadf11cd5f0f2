"""Which Dagster executor runs the steps of a run: one process, subprocesses, or one Kubernetes pod per step.

The graph is the same everywhere; only this choice (FINE_TUNE_DAG_EXECUTOR) and the instance's
`dagster.yaml` change between a laptop and a cluster (see deploy/README.md).
"""

import dagster as dg

LOCAL_EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "": dg.multi_or_in_process_executor,
    "multiprocess": dg.multiprocess_executor,
    "in_process": dg.in_process_executor,
}
EXECUTOR_NAMES = (*LOCAL_EXECUTORS, "k8s")


def executor_for(name: str) -> dg.ExecutorDefinition:
    """`dagster_k8s` is imported only when asked for, so installs without the `deploy` extra still load."""
    if name in LOCAL_EXECUTORS:
        return LOCAL_EXECUTORS[name]
    if name != "k8s":
        raise ValueError(f"unknown executor {name!r}; expected one of {', '.join(map(repr, EXECUTOR_NAMES))}")
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:
        raise ImportError(
            "the k8s executor needs dagster-k8s: pip install 'fine_tune_dag[deploy]'",
            name=error.name,
        ) from error
    return k8s_job_executor
