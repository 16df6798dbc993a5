"""The feature worker's consumer: its fetch wait comes from the Kafka settings, and a
message reaches its stream without a task unless it has to wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faust.types import TP, Message

from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.feature.app import create_app
from services.feature.settings import FeatureSettings
from services.feature.transport import FeatureConsumer, FeatureTransport


def test_the_worker_consumer_fetches_with_the_configured_wait(tmp_path: Path) -> None:
    settings = FeatureSettings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=37),
    )
    app = create_app(settings).app
    transport = app.transport
    assert isinstance(transport, FeatureTransport)

    async def worker_consumer_wait() -> int:
        consumer = app.consumer
        assert isinstance(consumer, FeatureConsumer)
        # faust builds its aiokafka consumer in the consumer thread's start; build it here.
        kafka_consumer = consumer._new_consumer_thread()._create_worker_consumer(transport)
        return int(kafka_consumer._fetch_max_wait_ms)

    # faust's own driver fixes 1,500 ms whatever the settings say.
    assert asyncio.run(worker_consumer_wait()) == 37


def _consumer(tmp_path: Path) -> FeatureConsumer:
    settings = FeatureSettings(
        data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9")
    )
    consumer = create_app(settings).app.consumer
    assert isinstance(consumer, FeatureConsumer)
    return consumer  # (run on consumer.loop: faust makes its tasks there)


def test_a_delivery_with_room_finishes_without_a_task(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path)

    async def deliver(value: int) -> int:
        return value * 2

    async def run() -> tuple[object, int]:
        tasks_before = len(asyncio.all_tasks())
        flow = consumer.suspend_flow.wait()
        results = await consumer.wait_first(deliver(21), flow)
        return results, len(asyncio.all_tasks()) - tasks_before

    results, new_tasks = consumer.loop.run_until_complete(run())
    assert results.results == [42] and not results.stopped  # type: ignore[attr-defined]
    assert new_tasks == 0


def test_a_delivery_that_waits_still_finishes_or_yields_to_a_flow_stop(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path)

    async def run() -> tuple[list[object], bool, list[str]]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        await queue.put(0)  # full: the next put waits
        steps: list[str] = []

        async def deliver(value: int) -> int:
            steps.append("started")
            try:
                await queue.put(value)
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            steps.append("put")
            return value

        async def drain_later() -> None:
            await asyncio.sleep(0.01)
            await queue.get()

        drainer = asyncio.create_task(drain_later())
        done = await consumer.wait_first(deliver(7), consumer.suspend_flow.wait())
        await drainer

        # Full again; this time the flow stops while the delivery waits.
        async def stop_flow_later() -> None:
            await asyncio.sleep(0.01)
            consumer.suspend_flow.set()

        stopper = asyncio.create_task(stop_flow_later())
        interrupted = await consumer.wait_first(deliver(8), consumer.suspend_flow.wait())
        await stopper
        await asyncio.sleep(0)  # let the cancelled delivery unwind
        return done.results, 8 in interrupted.results, steps

    results, second_delivered, steps = consumer.loop.run_until_complete(run())
    assert results == [7]
    assert not second_delivered
    assert steps == ["started", "put", "started", "cancelled"]


def test_a_delivery_error_propagates(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path)

    async def deliver() -> None:
        raise ValueError("bad message")

    async def run() -> None:
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())

    with pytest.raises(ValueError, match="bad message"):
        consumer.loop.run_until_complete(run())


def _message(topic: str, partition: int, offset: int) -> Message:
    return Message(
        topic, partition, offset, 0.0, 0, None, None, b"{}", None, tp=TP(topic, partition)
    )


def test_an_event_not_applied_is_settled_without_counting_its_offset(tmp_path: Path) -> None:
    """Its offset must stay uncommitted, so the partition's next read brings it again."""
    settings = FeatureSettings(
        data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9")
    )
    feature = create_app(settings)
    consumer = feature.app.consumer
    assert isinstance(consumer, FeatureConsumer)
    topic = Topics.from_settings(settings.kafka).interactions
    consumer.app.topics.acking_topics.add(topic)  # what the conductor does on subscribing
    tp = TP(topic, 0)
    consumer._committed_offset[tp] = None

    async def run() -> tuple[list[bool], list[bool]]:
        # Between a rebalance and its seek to committed offsets: nothing is applied yet.
        waiting = [_message(topic, 0, offset) for offset in (7, 8)]
        not_yet = await consumer.admit(waiting)
        for message in waiting:
            consumer._unacked_messages.add(message)
            consumer.ack(message)
        assert all(message.acked for message in waiting)
        assert not consumer._unacked_messages
        assert list(consumer._acked[tp]) == []
        # The seek to committed offsets starts the partition at 7: both are applied now.
        consumer._applied.start(tp, 7)
        again = [_message(topic, 0, offset) for offset in (7, 8)]
        applied = await consumer.admit(again)
        for message in again:
            consumer.ack(message)
        return not_yet, applied

    not_yet, applied = consumer.loop.run_until_complete(run())
    assert not_yet == [False, False]
    assert applied == [True, True]
    assert list(consumer._acked[tp]) == [7, 8]
