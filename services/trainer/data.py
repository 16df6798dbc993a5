"""The training data, rebuilt by replaying ``interactions`` and ``items`` from the start."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Message

from recsys.events import InteractionEvent, InvalidEvent, ItemEvent, parse_event
from recsys.topics import Topics
from services.trainer.columns import InteractionColumns


@dataclass
class EventLog:
    """Deduplicated interactions (by event_id) and the latest state of each item.

    Interactions are kept column-wise (:class:`InteractionColumns`): the log holds every
    interaction ever consumed, so its per-event cost is the trainer's memory growth.

    Invalid messages are skipped here: the services that own those topics (feature,
    inference) already send them to the dead-letter topic.
    """

    topics: Topics
    interactions: InteractionColumns = field(default_factory=InteractionColumns)
    items: dict[str, ItemEvent] = field(default_factory=dict)
    skipped: int = 0

    def add(self, message: Message) -> bool:
        """Apply one message; True when it added a new interaction."""
        try:
            if message.topic() == self.topics.interactions:
                return self.interactions.add(parse_event(InteractionEvent, message.value()))
            if message.topic() == self.topics.items:
                item = parse_event(ItemEvent, message.value())
                known = self.items.get(item.item_id)
                if known is None or known.timestamp <= item.timestamp:
                    self.items[item.item_id] = item
        except InvalidEvent:
            self.skipped += 1
        return False

    def snapshot(self) -> tuple[list[InteractionEvent], dict[str, ItemEvent]]:
        """A copy to train on while the log keeps growing; live items only."""
        live = {item_id: item for item_id, item in self.items.items() if item.op == "upsert"}
        return self.interactions.events(), live
