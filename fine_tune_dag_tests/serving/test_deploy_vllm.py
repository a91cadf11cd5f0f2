"""deploy/vllm/ builds a valid vLLM multi-LoRA server, and the arguments and promotion requests come from
fine_tune_dag.core.serving.vllm, checked offline the way test_deploy.py checks the rest of deploy/."""

from typing import Any

import pytest
from kubernetes.client import ApiClient
from test_deploy import DEPLOY, load_documents

from fine_tune_dag.core.serving.vllm import (
    load_champion_body,
    promotion_requests,
    serve_args,
    unload_champion_body,
)

VLLM = DEPLOY / "vllm"
ADAPTERS = {"v1": "/data/adapters/v1", "v2": "/data/adapters/v2", "v3": "/data/adapters/v3"}


def manifests() -> dict[str, dict[str, Any]]:
    return {manifest["kind"]: manifest for path in sorted(VLLM.glob("*.yaml")) for manifest in load_documents(path)}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_manifests_are_valid_kubernetes_objects(kind: str) -> None:
    """Each manifest goes through the Kubernetes client's own model (required fields, types) and back unchanged,
    so a misspelt or misplaced field, which the model would drop, fails here."""
    manifest = manifests()[kind]
    model = ApiClient()._ApiClient__deserialize(manifest, f"{manifest['apiVersion'].split('/')[-1].upper()}{kind}")

    assert ApiClient().sanitize_for_serialization(model) == manifest


def test_deployment_runs_vllm_with_every_adapter_and_the_champion_alias() -> None:
    vllm = container(manifests()["Deployment"])
    args = vllm["args"]
    modules = dict(entry.split("=", 1) for entry in args[args.index("--lora-modules") + 1 :])
    champion = next(
        version for version, path in modules.items() if version != "champion" and path == modules["champion"]
    )
    del modules["champion"]

    assert vllm["image"].startswith("vllm/vllm-openai:v") and vllm["image"] != "vllm/vllm-openai:latest"
    assert vllm["command"] == ["vllm", "serve"]
    assert args[0].startswith("/data/models/")
    assert "--enable-lora" in args
    assert args == serve_args(args[0], modules, champion, port=int(option(args, "--port")))
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]


def test_vllm_pod_requests_a_gpu_and_reads_the_shared_volume() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    claim = load_documents(DEPLOY / "k8s" / "pvc.yaml")[0]
    vllm = container(manifests()["Deployment"])

    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == vllm["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in vllm["volumeMounts"]


def test_service_exposes_the_port_vllm_listens_on() -> None:
    deployment, service = manifests()["Deployment"], manifests()["Service"]
    vllm = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in vllm["ports"]}
    exposed = service["spec"]["ports"][0]

    assert ports[exposed["targetPort"]] == exposed["port"] == int(option(vllm["args"], "--port"))
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_serve_args_load_three_versions_and_the_champion_alias() -> None:
    args = serve_args("/data/models/base", ADAPTERS, "v2")

    assert args == [
        "/data/models/base",
        "--served-model-name",
        "base",
        "--port",
        "8000",
        "--enable-lora",
        "--max-loras",
        "4",
        "--max-lora-rank",
        "16",
        "--lora-modules",
        "v1=/data/adapters/v1",
        "v2=/data/adapters/v2",
        "v3=/data/adapters/v3",
        "champion=/data/adapters/v2",
    ]


def test_promotion_unloads_then_loads_the_alias() -> None:
    assert unload_champion_body() == {"lora_name": "champion"}
    assert load_champion_body(ADAPTERS, "v3") == {"lora_name": "champion", "lora_path": "/data/adapters/v3"}
    assert promotion_requests(ADAPTERS, "v3") == [
        ("/v1/unload_lora_adapter", {"lora_name": "champion"}),
        ("/v1/load_lora_adapter", {"lora_name": "champion", "lora_path": "/data/adapters/v3"}),
    ]


def test_an_unknown_champion_is_refused() -> None:
    with pytest.raises(ValueError, match="champion 'v9' is not one of the adapters: v1, v2, v3"):
        serve_args("/data/models/base", ADAPTERS, "v9")
    with pytest.raises(ValueError, match="champion 'v9'"):
        load_champion_body(ADAPTERS, "v9")
