"""A faust table for batch processing: explicit changelog partitions, writes through
librdkafka that the batch awaits with its other output.

Three things faust's ``Table`` does not give a worker that applies events in batches:

- **Where a key's changelog record goes.** Outside a per-event stream context faust
  leaves the changelog partition to the producer's partitioner, which hashes the
  *serialised* key (JSON ``"u02"`` for a ``str`` key), not the key the events were
  partitioned by. About half the users' state then sat in a changelog partition other
  than the one their events arrive on, and a rebalance that moved their partition to
  another worker recovered no state for them: their history was lost. Every write here
  names its partition, the one the user's events were consumed from, so a partition's
  changelog holds exactly the state of that partition's users, whatever partitioner the
  producers of events use.
- **When the writes are durable.** faust acknowledges a batch's offsets when the agent
  moves on and commits them after ``producer.flush()``, which gives up on faust's own
  send buffer after 0.1 s without progress (``ProducerBuffer.flush_atmost``). Under a
  slow broker an offset could be committed while the writes it stands for were still
  buffered, and a SIGKILL lost them. Here the changelog records go out through the
  worker's librdkafka producer, whose ``flush`` the batch awaits before it is
  acknowledged, together with the sequences it publishes.
- **What a write costs.** faust's aiokafka producer spends a future, a task and a trip
  through its send buffer per record in Python; librdkafka batches in C. Recovery is
  unchanged: faust reads the changelog back, and the records are the bytes it would have
  written (the table's own serialisers, the same topic and partition).
"""

from __future__ import annotations

from typing import Any

import faust
from confluent_kafka import Producer

from recsys.kafka import produce, raise_on_failure


class DurableTable(faust.Table):  # type: ignore[type-arg]
    """``faust.Table`` written with :meth:`put`; changelog records go to ``producer``."""

    def __init__(self, *args: Any, producer: Producer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._producer = producer
        self._write_partition: int | None = None

    def put(self, key: Any, value: Any, *, partition: int) -> None:
        """Set ``key`` and record the change in changelog ``partition``: the partition of
        the source topic the key's events come from (the table is co-partitioned). The
        record is delivered by the next ``flush`` of the producer."""
        self._write_partition = partition
        try:
            self[key] = value
        finally:
            self._write_partition = None

    def partition_for_key(self, key: Any) -> int | None:
        if self._write_partition is None:
            raise TypeError(f"write {self.name!r} with put(key, value, partition=...)")
        return self._write_partition

    def on_key_set(self, key: Any, value: Any) -> None:
        self._write_changelog(key, value)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self._write_changelog(key, None)
        self._sensor_on_del(self, key)

    def _write_changelog(self, key: Any, value: Any) -> None:
        topic = self.changelog_topic
        key_bytes, _ = topic.prepare_key(key, self.key_serializer)
        value_bytes = None
        if value is not None:
            value_bytes, _ = topic.prepare_value(value, self.value_serializer)
        produce(
            self._producer,
            topic.get_topic_name(),
            key_bytes,
            value_bytes,
            on_delivery=raise_on_failure,
            partition=self.partition_for_key(key),
        )


def add_durable_table(
    app: faust.App, name: str, producer: Producer, **options: Any
) -> DurableTable:
    """Register a :class:`DurableTable` as ``app.Table`` would register a ``faust.Table``."""
    table = DurableTable(app, name=name, beacon=app.tables.beacon, producer=producer, **options)
    app.tables.add(table)
    return table
