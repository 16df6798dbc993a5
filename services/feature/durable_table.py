"""A faust table for batch processing: explicit changelog partitions, awaitable writes.

Two things faust's ``Table`` does not give a worker that applies events in batches:

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
  buffered, and a SIGKILL lost them. :meth:`DurableTable.changelog_delivered` awaits
  every write, so a batch is acknowledged only once its state is in Kafka.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.types import FutureMessage


class DurableTable(faust.Table):  # type: ignore[type-arg]
    """``faust.Table`` written with :meth:`put`, whose changelog writes can be awaited."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undelivered: list[FutureMessage] = []
        self._write_partition: int | None = None

    def put(self, key: Any, value: Any, *, partition: int) -> None:
        """Set ``key`` and record the change in changelog ``partition``: the partition of
        the source topic the key's events come from (the table is co-partitioned)."""
        self._write_partition = partition
        try:
            self[key] = value
        finally:
            self._write_partition = None

    def partition_for_key(self, key: Any) -> int | None:
        if self._write_partition is None:
            raise TypeError(f"write {self.name!r} with put(key, value, partition=...)")
        return self._write_partition

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        future: FutureMessage = super().send_changelog(*args, **kwargs)
        self._undelivered.append(future)
        return future

    async def changelog_delivered(self) -> None:
        """Return once every write so far is acknowledged by the broker; raise if one failed."""
        pending, self._undelivered = self._undelivered, []
        if pending:
            await asyncio.gather(*pending)


def add_durable_table(app: faust.App, name: str, **options: Any) -> DurableTable:
    """Register a :class:`DurableTable` as ``app.Table`` would register a ``faust.Table``."""
    table = DurableTable(app, name=name, beacon=app.tables.beacon, **options)
    app.tables.add(table)
    return table
