"""The promotion gate on real trained versions: a model made worse on purpose is rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from confluent_kafka import Producer

from recsys.artifacts import MANIFEST_FILE, ArtifactStore
from recsys.events import InteractionEvent, ItemVector, ModelUpdate, parse_event
from recsys.model.contrastive import ContrastiveConfig
from recsys.model.text_encoder import EmbeddingCache, TextEncoder
from recsys.topics import Topics
from services.trainer.gate import decide, run_gate, score_version
from services.trainer.loop import RunResult, train_and_gate
from services.trainer.model_settings import ModelSettings
from services.trainer.pipeline import EvalData, train_version
from services.trainer.versions import apply_decision
from tests.unit.test_pipeline import GENRES, make_interactions, make_items

TOLERANCE = 0.05
SETTINGS = ModelSettings(
    kind="contrastive",
    contrastive=ContrastiveConfig(dim=16, max_len=8, max_epochs=5, patience=2, batch_size=32),
)
TOPICS = Topics("gate-test.")


class RecordingProducer:
    """Stands in for a confluent_kafka Producer: keeps (topic, value) in produce order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, key: Any = None, value: bytes = b"", **_: Any) -> None:
        self.sent.append((topic, value))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0


def shuffled_labels(events: list[InteractionEvent], seed: int = 0) -> list[InteractionEvent]:
    """The same users, times and event types, with the item ids randomly permuted."""
    item_ids = [e.item_id for e in events]
    order = np.random.default_rng(seed).permutation(len(events))
    return [
        e.model_copy(update={"item_id": item_ids[j]}) for e, j in zip(events, order, strict=True)
    ]


class Scenario:
    def __init__(self, root: Path) -> None:
        self.items = make_items()
        self.events = make_interactions(self.items)
        self.store = ArtifactStore(root / "artifacts", "recsys")
        self.cache = EmbeddingCache(root / "cache")
        self.encoder = TextEncoder()
        self.producer = RecordingProducer()

    def apply(self, result: RunResult) -> str:
        producer = cast(Producer, self.producer)
        return apply_decision(self.store, producer, TOPICS, result.trained, result.decision)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """v1: properly trained, passed the gate with nothing serving, promoted."""
    scenario = Scenario(tmp_path_factory.mktemp("gate"))
    first = train_and_gate(
        scenario.events,
        scenario.items,
        scenario.store,
        SETTINGS,
        tolerance=TOLERANCE,
        cache=scenario.cache,
        encoder=scenario.encoder,
    )
    assert first.decision.promote and first.decision.record.serving is None
    assert first.decision.reason == "no serving version to compare with"
    assert scenario.apply(first) == "promoted"
    return scenario


def test_the_first_version_is_announced_and_serves(scenario: Scenario) -> None:
    serving = scenario.store.serving()
    assert serving is not None and serving.version == "v1" and serving.status == "promoted"
    assert serving.gate is not None and serving.gate.candidate > 0.5
    # the gate scored the exported model on the same split as the trainer's own evaluation
    assert serving.gate.candidate == pytest.approx(serving.metrics["valid_masked_ndcg@10"])
    topics = [topic for topic, _ in scenario.producer.sent]
    assert topics == [TOPICS.item_vectors] * 28 + [TOPICS.model_updates]
    update = parse_event(ModelUpdate, scenario.producer.sent[-1][1])
    assert (update.version, update.reason, update.item_count) == ("v1", "trained", 28)
    vector = parse_event(ItemVector, scenario.producer.sent[0][1])
    assert vector.model_version == "v1"


def test_a_model_trained_on_shuffled_labels_is_rejected(scenario: Scenario) -> None:
    store = scenario.store
    sent_before = len(scenario.producer.sent)
    bad = train_version(
        shuffled_labels(scenario.events),
        scenario.items,
        store,
        SETTINGS,
        scenario.cache,
        encoder=scenario.encoder,
    )
    serving = store.load("v1")
    # judged on the real interactions, the split every version is compared on
    decision = run_gate(
        store.load(bad.version), serving, scenario.events, scenario.items, TOLERANCE
    )

    assert not decision.promote
    record = decision.record
    assert record.serving_version == "v1" and record.serving is not None
    assert record.candidate < record.serving - TOLERANCE
    assert record.serving == pytest.approx(serving.manifest.metrics["valid_masked_ndcg@10"])
    # the paired figure is the same comparison, user by user
    assert record.paired_gain == pytest.approx(record.candidate / record.serving - 1)
    assert record.paired_ci95 is not None and record.paired_gain is not None
    low, high = record.paired_ci95
    assert low <= record.paired_gain <= high and low < 0
    assert "paired 95% interval" in decision.reason
    assert scenario.apply(RunResult(bad, decision)) == "rejected"

    manifest = store.manifest(bad.version)
    assert manifest.status == "rejected" and "below" in manifest.status_reason
    assert manifest.gate == record
    assert store.load(bad.version).item_ids == bad.item_ids  # files kept, checksums intact
    assert len(scenario.producer.sent) == sent_before  # never announced
    assert store.serving() is not None and store.serving().version == "v1"  # type: ignore[union-attr]


def test_a_properly_trained_model_is_promoted(scenario: Scenario) -> None:
    result = train_and_gate(
        scenario.events,
        scenario.items,
        scenario.store,
        SETTINGS,
        tolerance=TOLERANCE,
        cache=scenario.cache,
        encoder=scenario.encoder,
    )
    version = result.trained.version
    assert result.trained.warm_start is not None and result.trained.warm_start.reused
    assert result.decision.promote, result.decision.reason
    assert result.decision.record.serving_version == "v1"  # not the rejected one
    gate = result.decision.record
    assert gate.paired_ci95 is not None and gate.paired_gain is not None
    assert gate.paired_ci95[0] <= gate.paired_gain <= gate.paired_ci95[1]
    sent_before = len(scenario.producer.sent)
    assert scenario.apply(result) == "promoted"

    manifest = scenario.store.manifest(version)
    assert manifest.status == "promoted" and "within tolerance" in manifest.status_reason
    assert scenario.store.serving() == manifest
    new = scenario.producer.sent[sent_before:]
    assert [topic for topic, _ in new] == [TOPICS.item_vectors] * 28 + [TOPICS.model_updates]
    assert parse_event(ModelUpdate, new[-1][1]).version == version


@pytest.mark.parametrize(
    ("candidate", "serving", "promote"),
    [(0.30, 0.30, True), (0.25, 0.30, True), (0.249, 0.30, False), (0.50, 0.30, True)],
)
def test_decide_compares_within_the_tolerance(
    candidate: float, serving: float, promote: bool
) -> None:
    decision = decide(candidate, serving, "v1", 0.05, 40)
    assert decision.promote is promote
    assert decision.record.candidate == candidate and decision.record.serving == serving
    assert decide(0.0, None, None, 0.05, 0).promote
    assert decision.record.paired_gain is None and decision.record.paired_ci95 is None


def test_items_unknown_to_the_serving_model(tmp_path: Path, scenario: Scenario) -> None:
    """A version that never saw the cooking items: through its text tower (as inference
    would serve them) it ranks them exactly like a version trained with them; without
    text vectors they cannot be ranked and the figure drops."""
    store = ArtifactStore(tmp_path / "artifacts", "recsys")
    settings = ModelSettings(kind="recency_mean", max_seq_len=8)
    items = scenario.items
    partial_items = {k: v for k, v in items.items() if not k.startswith("cooking")}
    partial_events = [e for e in scenario.events if e.item_id in partial_items]
    kwargs: dict[str, Any] = {"encoder": scenario.encoder}
    old = train_version(partial_events, partial_items, store, settings, scenario.cache, **kwargs)
    full = train_version(scenario.events, items, store, settings, scenario.cache, **kwargs)
    assert full.text_vectors is not None and len(GENRES["cooking"]) == 7

    live = {k: v for k, v in items.items() if v.op == "upsert"}
    data = EvalData.build(scenario.events, list(live))
    name = full.manifest.encoder_name
    reference = score_version(store.load(full.version), data)
    by_text = score_version(store.load(old.version), data, full.text_vectors, name)
    unranked = score_version(store.load(old.version), data)

    assert by_text.unknown_items == unranked.unknown_items == 7
    assert by_text.ndcg == pytest.approx(reference.ndcg, abs=1e-6)
    assert unranked.ndcg < reference.ndcg - 0.1  # a quarter of the users like cooking
    other_encoder = score_version(store.load(old.version), data, full.text_vectors, "other")
    assert other_encoder.ndcg == pytest.approx(unranked.ndcg)


def test_old_manifests_load_as_promoted_and_serve_by_creation_time(tmp_path: Path) -> None:
    """Manifests written before the gate have no status fields at all."""
    store = ArtifactStore(tmp_path, "recsys")
    for number, created in ((1, 100.0), (2, 200.0)):
        folder = store.path(f"v{number}")
        folder.mkdir(parents=True)
        old = {
            "model_name": "recsys",
            "version": f"v{number}",
            "created_at": created,
            "encoder_name": "all-MiniLM-L6-v2",
            "vector_size": 4,
            "max_seq_len": 8,
            "item_count": 0,
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(old))
    manifests = store.list_versions()
    assert [(m.status, m.status_reason, m.gate, m.promoted_at) for m in manifests] == [
        ("promoted", "", None, None)
    ] * 2
    assert store.serving() == manifests[1]
    store.set_status("v1", "promoted", "promoted by hand")  # an operator's rollback
    assert store.serving() is not None and store.serving().version == "v1"  # type: ignore[union-attr]
    assert store.manifest("v1").promoted_at is not None
