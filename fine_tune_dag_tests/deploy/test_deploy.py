"""The Kubernetes setup in deploy/ builds and validates offline, with Dagster's and dagster-k8s's own code."""

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.ref import InstanceRef
from dagster_k8s import k8s_job_executor
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_postgres.utils import pg_url_from_config
from kubernetes.client import ApiClient

from fine_tune_dag.definitions import build_definitions, executor_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
POSTGRES_ENV = {
    "DAGSTER_PG_HOST": "postgres.test",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-secret",
}


def load_documents(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def resolve_instance(config_dir: Path, home: Path) -> dict[str, tuple[type, dict[str, Any]]]:
    """Validate a dagster.yaml as `DagsterInstance` would, up to but not including constructing the classes.

    `InstanceRef.from_dir` checks the instance schema; each configured class's own schema is then
    resolved the way `ConfigurableClassData.rehydrate` does it, env vars included. Constructing the
    classes is left out because it would connect to Postgres and Kubernetes.
    """
    ref = InstanceRef.from_dir(str(home), config_dir=str(config_dir))
    resolved = {}
    for field in ref._fields:
        data = getattr(ref, field)
        if not hasattr(data, "config_dict"):
            continue
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
        assert result.success, f"{field}: {[error.message for error in result.errors]}"
        resolved[field] = (klass, result.value)
    return resolved


@pytest.fixture
def cluster_instance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, tuple[type, dict[str, Any]]]:
    for name, value in POSTGRES_ENV.items():
        monkeypatch.setenv(name, value)
    return resolve_instance(DEPLOY, tmp_path)


@pytest.fixture
def defs(tmp_path: Path) -> dg.Definitions:
    return build_definitions(notes_dir=str(tmp_path / "notes"), data_dir=str(tmp_path / "data"))


def step_pod_manifest(defs: dg.Definitions, asset: str, run_launcher_config: dict[str, Any]) -> dict[str, Any]:
    """The pod template of the Job `k8s_job_executor` creates for this asset's step, as sent to the Kubernetes API."""
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/fine-tune-dag:test",
        **{key: value for key, value in run_launcher_config.items() if key in DagsterK8sJobConfig._fields},
    )
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{asset.replace('_', '-')}",
        component="step_worker",
        user_defined_k8s_config=get_user_defined_k8s_config(defs.resolve_assets_def(asset).op.tags),
    )
    return ApiClient().sanitize_for_serialization(job)["spec"]["template"]


def test_every_yaml_under_deploy_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml"))
    assert {path.relative_to(DEPLOY).as_posix() for path in paths} >= {
        "dagster.yaml",
        "helm/values.yaml",
        "k8s/configmap.yaml",
        "k8s/pvc.yaml",
        "k8s/secret.example.yaml",
    }
    for path in paths:
        assert load_documents(path), f"{path} is empty"
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for manifest in load_documents(path):
            assert {"apiVersion", "kind", "metadata"} <= manifest.keys(), path


def test_image_installs_the_same_torch_first() -> None:
    installs = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("RUN pip install")]
    pinned = re.search(r"torch==[\w.+]+", (REPO / "Makefile").read_text())

    assert pinned and pinned.group() in installs[0]
    assert '".[deploy]"' in installs[1]


def test_cluster_dagster_yaml_loads_as_a_dagster_instance(cluster_instance: dict) -> None:
    launcher_class, launcher_config = cluster_instance["run_launcher_data"]
    storage_class, storage_config = cluster_instance["storage_data"]

    assert launcher_class.__name__ == "K8sRunLauncher"
    assert launcher_config["load_incluster_config"] is True
    assert storage_class.__name__ == "DagsterPostgresStorage"
    assert pg_url_from_config(storage_config) == "postgresql+psycopg2://dagster:not-a-secret@postgres.test:5432/dagster"
    assert cluster_instance["run_coordinator_data"][0].__name__ == "QueuedRunCoordinator"


def test_cluster_dagster_yaml_reads_postgres_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in POSTGRES_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AssertionError, match="DAGSTER_PG_HOST"):
        resolve_instance(DEPLOY, tmp_path)


def test_local_dagster_yaml_loads_as_a_dagster_instance(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    resolve_instance(tmp_path, tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled


@pytest.mark.parametrize("asset", ["lora_adapter", "eval_report"])
def test_gpu_step_pods_request_a_gpu_on_gpu_nodes(defs: dg.Definitions, cluster_instance: dict, asset: str) -> None:
    pod = step_pod_manifest(defs, asset, cluster_instance["run_launcher_data"][1])
    container = pod["spec"]["containers"][0]

    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"secretRef": {"name": "fine-tune-dag-secrets"}} in container["envFrom"]


def test_cpu_step_pods_request_no_gpu(defs: dg.Definitions, cluster_instance: dict) -> None:
    pod = step_pod_manifest(defs, "qa_pairs", cluster_instance["run_launcher_data"][1])

    assert "nvidia.com/gpu" not in json.dumps(pod)


def test_graph_resolves_with_the_k8s_executor(tmp_path: Path) -> None:
    k8s_defs = build_definitions(notes_dir=str(tmp_path / "notes"), data_dir=str(tmp_path / "data"), executor="k8s")

    assert executor_for("k8s") is k8s_job_executor
    dg.Definitions.validate_loadable(k8s_defs)
    assert k8s_defs.resolve_job_def("train_and_evaluate_job").executor_def is k8s_job_executor


def test_executor_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert executor_for("") is dg.multi_or_in_process_executor
    assert executor_for("multiprocess") is dg.multiprocess_executor
    assert executor_for("in_process") is dg.in_process_executor
    with pytest.raises(ValueError, match="'k8s'"):
        executor_for("celery")
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # as without the deploy extra
    with pytest.raises(ImportError, match=r"fine_tune_dag\[deploy\]"):
        executor_for("k8s")


def test_helm_values_configmap_and_instance_agree(cluster_instance: dict) -> None:
    values = load_documents(DEPLOY / "helm" / "values.yaml")[0]
    instance = load_documents(DEPLOY / "dagster.yaml")[0]
    settings = load_documents(DEPLOY / "k8s" / "configmap.yaml")[0]
    claim = load_documents(DEPLOY / "k8s" / "pvc.yaml")[0]
    secrets = {secret["metadata"]["name"]: secret for secret in load_documents(DEPLOY / "k8s" / "secret.example.yaml")}
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = cluster_instance["run_launcher_data"][1]

    assert deployment["dagsterApiGrpcArgs"] == ["-m", "fine_tune_dag.definitions"]
    assert settings["data"]["FINE_TUNE_DAG_EXECUTOR"] == "k8s"
    assert deployment["envConfigMaps"] == [{"name": settings["metadata"]["name"]}]
    assert launcher["env_config_maps"] == [settings["metadata"]["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for volumes, mounts in (
        (deployment["volumes"], deployment["volumeMounts"]),
        (launcher["volumes"], launcher["volume_mounts"]),
    ):
        assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert mounts[0]["mountPath"] == settings["data"]["FINE_TUNE_DAG_DATA_DIR"]
    assert deployment["envSecrets"] == [{"name": "fine-tune-dag-secrets"}] and launcher["env_secrets"] == [
        "fine-tune-dag-secrets"
    ]
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]
    assert set(secrets) == {"fine-tune-dag-secrets", launcher["postgres_password_secret"]}
    assert "postgresql-password" in secrets[launcher["postgres_password_secret"]]["stringData"]
    assert all(value == "replace-me" for secret in secrets.values() for value in secret["stringData"].values())
    assert values["concurrency"]["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"] == 1
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    assert values["telemetry"]["enabled"] is instance["telemetry"]["enabled"] is False
