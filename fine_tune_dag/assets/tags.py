"""Op tags for the steps that want an accelerator, and the run tag naming a note run's file.

`dagster-k8s` reads `dagster-k8s/config` to shape the step's pod (see deploy/); local executors ignore it.
"""

NOTE_PATH_TAG = "fine_tune_dag/note"  # new_notes_sensor's runs: the note's path relative to the notes folder

GPU_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
}
