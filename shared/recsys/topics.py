"""Topic names (with the configurable prefix) and their creation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from recsys.settings import KafkaSettings

log = logging.getLogger(__name__)

INTERACTIONS = "interactions"
ITEMS = "items"
USER_SEQUENCES = "user-sequences"
USER_VECTORS = "user-vectors"
ITEM_VECTORS = "item-vectors"
ITEM_POPULARITY = "item-popularity"
MODEL_UPDATES = "model-updates"
DEAD_LETTER = "dead-letter"
TRAINER_COMMANDS = "trainer-commands"

# Topics keyed by an entity whose latest value is all that matters.
COMPACTED = frozenset({USER_SEQUENCES, USER_VECTORS, ITEM_VECTORS, ITEM_POPULARITY})
ALL_TOPICS = (
    INTERACTIONS,
    ITEMS,
    USER_SEQUENCES,
    USER_VECTORS,
    ITEM_VECTORS,
    ITEM_POPULARITY,
    MODEL_UPDATES,
    DEAD_LETTER,
    TRAINER_COMMANDS,
)
# One partition keeps model announcements totally ordered; one trainer reads commands.
SINGLE_PARTITION = frozenset({MODEL_UPDATES, TRAINER_COMMANDS})
# Replayed from the beginning by the trainer, inference and the indexer: kept forever
# (with tiered storage in production) rather than for the broker's default 7 days.
KEEP_FOREVER = frozenset({INTERACTIONS, ITEMS, MODEL_UPDATES})
# Requests to act now: stale after a day, so a long-stopped trainer does not replay them.
SHORT_RETENTION_MS = {TRAINER_COMMANDS: 24 * 3600 * 1000}


@dataclass(frozen=True)
class Topics:
    """Fully qualified topic names for one deployment."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def interactions(self) -> str:
        return self.name(INTERACTIONS)

    @property
    def items(self) -> str:
        return self.name(ITEMS)

    @property
    def user_sequences(self) -> str:
        return self.name(USER_SEQUENCES)

    @property
    def user_vectors(self) -> str:
        return self.name(USER_VECTORS)

    @property
    def item_vectors(self) -> str:
        return self.name(ITEM_VECTORS)

    @property
    def item_popularity(self) -> str:
        return self.name(ITEM_POPULARITY)

    @property
    def model_updates(self) -> str:
        return self.name(MODEL_UPDATES)

    @property
    def dead_letter(self) -> str:
        return self.name(DEAD_LETTER)

    @property
    def trainer_commands(self) -> str:
        return self.name(TRAINER_COMMANDS)

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> Topics:
        return cls(settings.topic_prefix)


def create_topics(settings: KafkaSettings, timeout_s: float = 30.0) -> list[str]:
    """Create every project topic that does not exist yet; return the names created."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topics = Topics.from_settings(settings)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = []
    for base in ALL_TOPICS:
        name = topics.name(base)
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if base in COMPACTED else {}
        if base in KEEP_FOREVER:
            config["retention.ms"] = "-1"
        if base in SHORT_RETENTION_MS:
            config["retention.ms"] = str(SHORT_RETENTION_MS[base])
        partitions = 1 if base in SINGLE_PARTITION else settings.partitions
        wanted.append(NewTopic(name, partitions, settings.replication_factor, config=config))
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except Exception as exc:  # already exists after a race is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("topics created", extra={"topics": created})
    return created
