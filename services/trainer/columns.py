"""The trainer's interactions, kept column-wise instead of one pydantic object per event.

The trainer holds every interaction it has consumed. As parsed ``InteractionEvent``
objects that cost about 1.2 kB each (object, ``__dict__``, fields-set, five strings), i.e.
~7 MB a minute at 100 events/s. Here an event costs about 100 bytes: its id in one shared
buffer, user and item ids interned to int codes, the type as a byte, timestamp and value
as doubles, and an open-addressing index for exact deduplication by ``event_id``. The
events are rebuilt, field for field, only when a training run takes a snapshot.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping

from recsys.events import EVENT_TYPES, InteractionEvent

_TYPE_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
_MIN_SLOTS = 16


class InteractionColumns(Mapping[str, InteractionEvent]):
    """Interactions by ``event_id``, in arrival order; the first event with an id wins."""

    def __init__(self) -> None:
        self._ids = bytearray()  # every event id (UTF-8), back to back
        self._ends = array("q")  # where each id ends in _ids
        self._users = array("i")  # codes into _names
        self._items = array("i")
        self._types = array("b")  # index into EVENT_TYPES
        self._timestamps = array("d")
        self._values = array("d")  # NaN for None: events never carry NaN (allow_inf_nan=False)
        self._codes: dict[str, int] = {}  # user and item ids share one interning table
        self._names: list[str] = []
        self._slots = array("i", [0]) * _MIN_SLOTS  # position + 1 of an event; 0 = empty

    def add(self, event: InteractionEvent) -> bool:
        """Keep ``event`` unless its id is already here; True when it was added."""
        key = event.event_id.encode()
        slot, position = self._find(key)
        if position >= 0:
            return False
        position = len(self._ends)
        self._slots[slot] = position + 1
        self._ids += key
        self._ends.append(len(self._ids))
        self._users.append(self._code(event.user_id))
        self._items.append(self._code(event.item_id))
        self._types.append(_TYPE_CODES[event.event_type])
        self._timestamps.append(event.timestamp)
        self._values.append(math.nan if event.value is None else event.value)
        if 2 * len(self._ends) > len(self._slots):  # keep probes short: load <= 1/2
            self._rehash(2 * len(self._slots))
        return True

    def events(self) -> list[InteractionEvent]:
        """Every event, in arrival order, as the ``InteractionEvent`` that was added."""
        return [self._event(position) for position in range(len(self._ends))]

    def __getitem__(self, event_id: str) -> InteractionEvent:
        position = self._find(event_id.encode())[1]
        if position < 0:
            raise KeyError(event_id)
        return self._event(position)

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self._find(event_id.encode())[1] >= 0

    def __iter__(self) -> Iterator[str]:
        return (self._id(position).decode() for position in range(len(self._ends)))

    def __len__(self) -> int:
        return len(self._ends)

    def _code(self, name: str) -> int:
        code = self._codes.get(name)
        if code is None:
            code = self._codes[name] = len(self._names)
            self._names.append(name)
        return code

    def _id(self, position: int) -> bytes:
        start = self._ends[position - 1] if position else 0
        return bytes(self._ids[start : self._ends[position]])

    def _event(self, position: int) -> InteractionEvent:
        value = self._values[position]
        # The fields were validated when the event was parsed; rebuild without re-validating.
        return InteractionEvent.model_construct(
            event_id=self._id(position).decode(),
            user_id=self._names[self._users[position]],
            item_id=self._names[self._items[position]],
            event_type=EVENT_TYPES[self._types[position]],
            timestamp=self._timestamps[position],
            value=None if math.isnan(value) else value,
        )

    def _find(self, key: bytes) -> tuple[int, int]:
        """The slot that holds ``key`` (or the empty slot where it would go), and its
        event's position (-1 when absent). Linear probing."""
        mask = len(self._slots) - 1
        slot = hash(key) & mask
        while True:
            entry = self._slots[slot]
            if entry == 0:
                return slot, -1
            if self._id(entry - 1) == key:
                return slot, entry - 1
            slot = (slot + 1) & mask

    def _rehash(self, size: int) -> None:
        self._slots = array("i", [0]) * size
        mask = size - 1
        for position in range(len(self._ends)):
            slot = hash(self._id(position)) & mask
            while self._slots[slot]:
                slot = (slot + 1) & mask
            self._slots[slot] = position + 1
