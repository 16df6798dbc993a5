"""``recsys models`` and ``recsys train`` against the real test broker.

Promote and rollback must publish the version's item vectors and then its ModelUpdate
(the last announcement is what every service serves), and record the statuses; ``recsys
train`` must leave a TrainRequest that the trainer loop turns into one manual run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from confluent_kafka import Message

from recsys import cli
from recsys.artifacts import ArtifactStore, GateRecord, Manifest
from recsys.events import ItemVector, ModelUpdate, TrainRequest, parse_event
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.trainer.loop import MANUAL, RunResult, TrainerLoop
from services.trainer.schedule import RetrainPolicy
from tests.conftest import kafka_env
from tests.support.topics import TopicReader

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


def commit_version(store: ArtifactStore, n_items: int, seed: int, **fields: Any) -> Manifest:
    """A complete version without training: the store checks files, not ONNX contents."""
    ids = [f"i{k}" for k in range(n_items)]
    vectors = np.random.default_rng(seed).normal(size=(n_items, 4)).astype(np.float32)
    with store.create_version() as draft:
        draft.user_encoder_path.write_bytes(b"onnx stand-in")
        draft.item_encoder_path.write_bytes(b"onnx stand-in")
        draft.write_items(ids, vectors, [{"item_id": i, "title": i.upper()} for i in ids])
        draft.write_popularity(ids[:2], [3, 1])
        return draft.commit(
            {
                "encoder_name": "all-MiniLM-L6-v2",
                "max_seq_len": 8,
                "metrics": {"valid_masked_ndcg@10": 0.1 * seed, "test_masked_ndcg@10": 0.05},
                **fields,
            }
        )


@pytest.fixture
def store(tmp_path: Path, kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    for name, value in kafka_env(kafka).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECSYS_ARTIFACTS_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("RECSYS_ARTIFACTS_MODEL_NAME", "shop")
    return ArtifactStore(tmp_path / "artifacts", "shop")


@pytest.fixture
def reader(kafka: KafkaSettings, topics: Topics) -> Iterator[TopicReader]:
    r = TopicReader(kafka, [topics.item_vectors, topics.model_updates])
    yield r
    r.close()


def _updates(reader: TopicReader, topics: Topics, count: int) -> list[Message]:
    reader.wait_until(
        lambda _: len(reader.on(topics.model_updates)) >= count, DEADLINE_S, f"{count} updates"
    )
    return reader.on(topics.model_updates)


def _vectors_of(reader: TopicReader, topics: Topics, version: str) -> list[Message]:
    return [
        m
        for m in reader.on(topics.item_vectors)
        if parse_event(ItemVector, m.value()).model_version == version
    ]


def _assert_announced(
    reader: TopicReader, topics: Topics, update_message: Message, version: str, items: int
) -> None:
    """The update names the version, and every one of its vectors was produced before it."""
    update = parse_event(ModelUpdate, update_message.value())
    assert (update.version, update.item_count, update.model_name) == (version, items, "shop")
    vectors = _vectors_of(reader, topics, version)
    assert sorted({parse_event(ItemVector, m.value()).item_id for m in vectors}) == sorted(
        f"i{k}" for k in range(items)
    )
    produced_at = update_message.timestamp()[1]
    assert all(m.timestamp()[1] <= produced_at for m in vectors)


def test_promote_then_rollback(
    store: ArtifactStore,
    topics: Topics,
    reader: TopicReader,
    capsys: pytest.CaptureFixture[str],
) -> None:
    commit_version(store, 5, seed=1)  # v1: an old-style version, promoted at commit
    gate = GateRecord(
        candidate=0.1, serving=0.3, serving_version="v1", tolerance=0.01, decided_at=1.0
    )
    commit_version(store, 6, seed=2, status="candidate")
    store.set_status("v2", "rejected", "below the serving version", gate)

    assert cli.main(["models", "promote", "v2"]) == 0
    assert "promoted v2" in capsys.readouterr().out
    (first,) = _updates(reader, topics, 1)
    reader.wait_until(lambda _: len(_vectors_of(reader, topics, "v2")) >= 6, DEADLINE_S, "v2")
    _assert_announced(reader, topics, first, "v2", 6)
    assert parse_event(ModelUpdate, first.value()).reason == "promote"
    v2 = store.manifest("v2")
    assert v2.status == "promoted" and v2.promoted_at is not None and v2.gate == gate
    assert store.serving() == v2

    assert cli.main(["models", "list", "--json"]) == 0
    rows = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["v2"]["serving"] and not rows["v1"]["serving"]
    assert rows["v2"]["gate"]["serving_version"] == "v1"
    assert rows["v1"]["valid_ndcg@10"] == pytest.approx(0.1)

    assert cli.main(["models", "rollback"]) == 0
    assert "rolled back from v2" in capsys.readouterr().out
    second = _updates(reader, topics, 2)[1]
    reader.wait_until(lambda _: len(_vectors_of(reader, topics, "v1")) >= 5, DEADLINE_S, "v1")
    _assert_announced(reader, topics, second, "v1", 5)
    assert parse_event(ModelUpdate, second.value()).reason == "rollback"
    v2 = store.manifest("v2")
    assert (v2.status, v2.status_reason) == ("rejected", "rolled back")
    serving = store.serving()
    assert serving is not None and serving.version == "v1"

    assert cli.main(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("*") and " v1 " in table[1]
    assert "rolled back" in table[2] and "0.1000 vs 0.3000 (v1)" in table[2]

    assert cli.main(["models", "rollback"]) == 1  # v1 is the only promoted version left
    assert "nothing to roll back to" in capsys.readouterr().err
    assert len(_updates(reader, topics, 2)) == 2


def test_errors_are_clear(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "rollback"]) == 1
    assert "no promoted version" in capsys.readouterr().err
    commit_version(store, 3, seed=1)
    assert cli.main(["models", "promote", "v9"]) == 2
    assert "has no version v9" in capsys.readouterr().err
    assert cli.main(["models", "promote", "latest"]) == 2
    assert "not a version name" in capsys.readouterr().err
    (store.path("v1") / "item_vectors.npy").write_bytes(b"corrupt")
    assert cli.main(["models", "promote", "v1"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def _finished(result: RunResult) -> str:
    return "rejected"


def test_train_request_becomes_one_manual_run(
    store: ArtifactStore, kafka: KafkaSettings, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = TopicReader(kafka, [topics.trainer_commands])
    try:
        assert cli.main(["train", "--reason", "catalogue reload"]) == 0
        assert "requested a training run" in capsys.readouterr().out
        assert cli.main(["train"]) == 0
        messages = requests.wait_until(lambda ms: len(ms) >= 2, DEADLINE_S, "two requests")
    finally:
        requests.close()
    first, second = messages
    assert parse_event(TrainRequest, first.value()).reason == "catalogue reload"

    release = threading.Event()
    started: list[int] = []

    def job(interactions: list[Any], items: dict[str, Any]) -> RunResult:
        started.append(len(interactions))
        release.wait(DEADLINE_S)
        return cast(RunResult, None)

    # a policy that never trains by itself: only requests start runs here
    policy = RetrainPolicy(10**9, 10**9, 0.0, 0.0)
    with ThreadPoolExecutor(max_workers=1) as executor:
        loop = TrainerLoop(topics, policy, job, _finished, executor)
        loop.handle([first])
        assert loop.step() is None
        assert loop.run_reason == MANUAL and loop.running is not None and loop.pending is None
        loop.handle([second])  # arrives during the run: queued, not started
        assert loop.step() is None and loop.pending is not None and len(started) <= 1
        assert loop.committable() == []  # nothing done yet

        release.set()
        loop.running.result(DEADLINE_S)
        assert loop.step() == "rejected"  # the first run finished; the queued one starts
        offsets = loop.committable()
        assert [(o.topic, o.offset) for o in offsets] == [(first.topic(), first.offset() + 1)]
        assert loop.run_reason == MANUAL and loop.pending is None
        loop.running.result(DEADLINE_S)
        assert loop.step() == "rejected" and loop.running is None
        assert [o.offset for o in loop.committable()] == [second.offset() + 1]
        assert loop.step() is None and loop.running is None  # no request left, no run
    assert started == [0, 0]
