"""deploy/k8s: every overlay renders with kubectl kustomize and validates offline against
the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from recsys import topics as recsys_topics
from tests.deploy.manifests import (
    COMPONENTS,
    OVERLAYS,
    Manifest,
    by_kind,
    find,
    pod_spec,
    render_component,
    render_overlay,
)

# Oldest and newest Kubernetes minor versions the manifests are checked against: native
# gRPC probes are GA since 1.27, PodDisruptionBudget.unhealthyPodEvictionPolicy since 1.31
# (beta, on by default, since 1.27); kubectl here is 1.32.
K8S_VERSIONS = ("1.30.0", "1.32.0")

# Custom resources: not in the Kubernetes schemas, so skipped by kind, and only these.
CRD_KINDS = {
    "Kafka": "kafka.strimzi.io/v1beta2",
    "KafkaNodePool": "kafka.strimzi.io/v1beta2",
    "KafkaTopic": "kafka.strimzi.io/v1beta2",
    "ScaledObject": "keda.sh/v1alpha1",
}
EXPECTED_CRDS = {
    "dev": set(),
    "prod": {"Kafka", "KafkaNodePool", "KafkaTopic"},
    "keda-feature": {"Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject"},
}
VARIANTS = [*OVERLAYS, *COMPONENTS]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Manifest, ...]]:
    tmp: Path = tmp_path_factory.mktemp("kustomize")
    out = {name: render_overlay(name) for name in OVERLAYS}
    out |= {name: render_component(name, tmp) for name in COMPONENTS}
    return out


def _validate(doc: Manifest, version: str) -> None:
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where} is invalid for Kubernetes {version} at {path}: {exc.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_and_validates(
    rendered: dict[str, tuple[Manifest, ...]], variant: str, version: str
) -> None:
    docs = rendered[variant]
    assert docs, f"{variant} rendered nothing"
    skipped = set()
    for doc in docs:
        kind = doc["kind"]
        if kind in CRD_KINDS:
            assert doc["apiVersion"] == CRD_KINDS[kind], f"{kind} has {doc['apiVersion']}"
            skipped.add(kind)
            continue
        _validate(doc, version)
    assert skipped == EXPECTED_CRDS[variant], f"{variant}: skipped (CRD) kinds {skipped}"


def test_validator_is_strict() -> None:
    """A misspelt field must fail, or the test above proves nothing."""
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x", "readinessProbes": {}}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


SERVICES = ("feature", "inference", "indexer", "ranking", "trainer")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_deployment_and_service_per_service(
    rendered: dict[str, tuple[Manifest, ...]], overlay: str
) -> None:
    docs = rendered[overlay]
    for service in SERVICES:
        deployment = find(docs, "Deployment", f"recsys-{service}")
        svc = find(docs, "Service", f"recsys-{service}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items(), service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_singletons_and_autoscaling(
    rendered: dict[str, tuple[Manifest, ...]], overlay: str
) -> None:
    docs = rendered[overlay]
    # One writer per collection; one trainer (consumer group of one, the artifact writer).
    for name in ("recsys-indexer", "recsys-trainer"):
        deployment = find(docs, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1, name
        assert deployment["spec"]["strategy"]["type"] == "Recreate", name
        assert not [
            h
            for h in by_kind(docs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == name
        ], f"{name} must not autoscale"
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert scaled == {"recsys-ranking", "recsys-inference"}
    budgets = {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")}
    assert budgets == {"recsys-ranking", "recsys-feature", "recsys-inference"}
    assert not by_kind(docs, "CronJob"), "the trainer is a Deployment (see trainer.yaml)"


def _kafka_settings(docs: tuple[Manifest, ...]) -> dict[str, str]:
    (config,) = [
        cm["data"]
        for cm in by_kind(docs, "ConfigMap")
        if cm["metadata"]["name"].startswith("recsys-kafka-")
    ]
    data: dict[str, str] = config
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_do_not_outnumber_partitions(
    rendered: dict[str, tuple[Manifest, ...]], overlay: str
) -> None:
    """Members beyond the partition count of their input topic would sit idle."""
    docs = rendered[overlay]
    partitions = int(_kafka_settings(docs)["RECSYS_KAFKA_PARTITIONS"])
    assert find(docs, "Deployment", "recsys-feature")["spec"]["replicas"] <= partitions
    hpa = find(docs, "HorizontalPodAutoscaler", "recsys-inference")
    assert hpa["spec"]["maxReplicas"] <= partitions


def test_strimzi_topics_match_recsys_topics(rendered: dict[str, tuple[Manifest, ...]]) -> None:
    """prod's KafkaTopic resources are what `recsys topics create` would make."""
    docs = rendered["prod"]
    settings = _kafka_settings(docs)
    prefix = settings["RECSYS_KAFKA_TOPIC_PREFIX"]
    (kafka,) = by_kind(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    assert settings["RECSYS_KAFKA_BOOTSTRAP_SERVERS"] == f"{cluster}-kafka-bootstrap:9092"
    topics = {
        t.get("spec", {}).get("topicName", t["metadata"]["name"]): t
        for t in by_kind(docs, "KafkaTopic")
    }
    assert set(topics) == {prefix + base for base in recsys_topics.ALL_TOPICS}
    for base in recsys_topics.ALL_TOPICS:
        topic = topics[prefix + base]
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        expected = (
            1
            if base in recsys_topics.SINGLE_PARTITION
            else int(settings["RECSYS_KAFKA_PARTITIONS"])
        )
        assert spec["partitions"] == expected, base
        assert spec["replicas"] == int(settings["RECSYS_KAFKA_REPLICATION_FACTOR"]), base
        compacted = spec.get("config", {}).get("cleanup.policy") == "compact"
        assert compacted == (base in recsys_topics.COMPACTED), base
    assert not by_kind(docs, "Job"), "prod topics come from Strimzi, not the topics Job"


def test_keda_targets_the_feature_consumer_group(
    rendered: dict[str, tuple[Manifest, ...]],
) -> None:
    docs = rendered["keda-feature"]
    (scaled,) = by_kind(docs, "ScaledObject")
    settings = _kafka_settings(docs)
    feature_config = next(
        cm["data"]
        for cm in by_kind(docs, "ConfigMap")
        if cm["metadata"]["name"].startswith("recsys-feature-")
    )
    from services.feature.settings import FeatureSettings

    app_id = feature_config.get(
        "RECSYS_FEATURE_APP_ID", FeatureSettings.model_fields["app_id"].default
    )
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "recsys-feature"
    assert meta["bootstrapServers"] == settings["RECSYS_KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == settings["RECSYS_KAFKA_TOPIC_PREFIX"] + app_id
    assert meta["topic"] == settings["RECSYS_KAFKA_TOPIC_PREFIX"] + recsys_topics.INTERACTIONS
    assert scaled["spec"]["maxReplicaCount"] <= int(settings["RECSYS_KAFKA_PARTITIONS"])


def test_gpu_scheduling_in_prod(rendered: dict[str, tuple[Manifest, ...]]) -> None:
    docs = rendered["prod"]
    pod = pod_spec(find(docs, "Deployment", "recsys-inference"))
    assert pod is not None
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert container["image"].endswith("-gpu")
    dev = pod_spec(find(rendered["dev"], "Deployment", "recsys-inference"))
    assert dev is not None
    assert "nvidia.com/gpu" not in str(dev), "dev runs inference on the CPU"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_artifact_store_is_shared(rendered: dict[str, tuple[Manifest, ...]], overlay: str) -> None:
    """One PVC: the trainer mounts it read-write, inference and ranking read-only."""
    docs = rendered[overlay]
    pvc = find(docs, "PersistentVolumeClaim", "recsys-artifacts")
    expected_mode = "ReadWriteOnce" if overlay == "dev" else "ReadWriteMany"
    assert pvc["spec"]["accessModes"] == [expected_mode]
    for service, read_only in (("trainer", False), ("inference", True), ("ranking", True)):
        pod = pod_spec(find(docs, "Deployment", f"recsys-{service}"))
        assert pod is not None
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == "recsys-artifacts"
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        assert bool(mount.get("readOnly")) == read_only, service
