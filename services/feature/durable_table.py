"""A faust table whose changelog writes a batch can wait for.

faust acknowledges a batch's offsets when the agent moves on, and commits them after
``producer.flush()``. That flush gives up on faust's own send buffer after 0.1 s without
progress (``ProducerBuffer.flush_atmost``), so under a slow broker an offset could be
committed while the table writes it stands for were still buffered; a SIGKILL then lost
them for good, since the restarted worker neither replays those events nor finds their
state in the changelog. Awaiting every write's delivery before the batch returns closes
that window: an offset is only acknowledged once the state it covers is in Kafka.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.types import FutureMessage


class DurableTable(faust.Table):  # type: ignore[type-arg]
    """``faust.Table`` that remembers the changelog writes not yet awaited."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undelivered: list[FutureMessage] = []

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
