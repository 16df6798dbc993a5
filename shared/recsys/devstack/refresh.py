"""Model refresh and cold-start measurements against a running stack.

Used by ``bench/refresh.py`` (MovieLens, figures in ``bench/results/refresh.json``) and
by ``tests/e2e/test_refresh.py`` (a small catalogue, with assertions), so the benchmark
and the test are the same code.

* :class:`Traffic`: several client threads call ``Recommend`` without pause and record
  every answer (status, model version, items, time).
* :func:`swap_report`: failed calls, calls during a swap, version regressions (a client
  that has seen the announced version answered with another one before the next
  announcement), and the swap time from the announcement of a version (its
  ``model-updates`` message) to the first answer ranked with it.
* :func:`cold_item_seconds`: publish text-only items one by one and time until
  ``SimilarItems`` of each returns neighbours that share its category.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from recsys.events import ItemEvent, ModelUpdate
from recsys.kafka import make_producer, make_replay_consumer, produce, usable
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from recsys.v1 import ranking_pb2, ranking_pb2_grpc


@dataclass(frozen=True)
class Call:
    client: int
    ended: float  # time.time()
    code: str
    model_version: str
    fallback: bool
    items: tuple[str, ...]


class Traffic:
    """``clients`` threads, each calling Recommend for random users until stopped."""

    def __init__(self, address: str, users: Sequence[str], clients: int = 4, k: int = 10) -> None:
        self._address = address
        self._users = list(users)
        self._k = k
        self._stop = threading.Event()
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"traffic-{n}", daemon=True)
            for n in range(clients)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Call]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        return self.calls()

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def _run(self, client: int) -> None:
        rng = np.random.default_rng(client)
        with grpc.insecure_channel(self._address) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
            while not self._stop.is_set():
                user = self._users[int(rng.integers(len(self._users)))]
                request = ranking_pb2.RecommendRequest(user_id=user, k=self._k)
                try:
                    response = stub.Recommend(request, timeout=5)
                    call = Call(
                        client,
                        time.time(),
                        "OK",
                        response.model_version,
                        response.fallback,
                        tuple(i.item_id for i in response.items),
                    )
                except grpc.RpcError as exc:
                    call = Call(client, time.time(), exc.code().name, "", False, ())
                with self._lock:
                    self._calls.append(call)
                time.sleep(0.002)  # leave the two cores some room for the swap itself


class Announcements:
    """Records when each version is announced on ``model-updates`` (replayed from the start)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._consumer = make_replay_consumer(
            kafka, Topics.from_settings(kafka).model_updates, "refresh-bench"
        )
        self.seen: list[tuple[float, str]] = []  # (announced at, version), in log order

    def poll(self, timeout_s: float = 0.2) -> list[tuple[float, str]]:
        for message in usable(self._consumer.consume(100, timeout_s)):
            update = ModelUpdate.model_validate_json(message.value() or b"")
            kind, stamp = message.timestamp()
            at = stamp / 1000 if kind and stamp > 0 else time.time()
            self.seen.append((at, update.version))
        return self.seen

    def wait_for(self, count: int, timeout_s: float) -> list[tuple[float, str]]:
        deadline = time.monotonic() + timeout_s
        while len(self.poll()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.seen)} of {count} announcements after {timeout_s}s")
        return self.seen

    def close(self) -> None:
        self._consumer.close()


@dataclass
class SwapReport:
    calls: int
    failed_calls: int
    failures: dict[str, int]
    calls_during_swap: int
    version_regressions: int
    swaps: list[dict[str, float | str]] = field(default_factory=list)

    @property
    def swap_seconds(self) -> float | None:
        times = [float(s["seconds"]) for s in self.swaps]
        return max(times) if times else None


def swap_report(calls: Sequence[Call], announced: Sequence[tuple[float, str]]) -> SwapReport:
    """Figures over a run that crossed the given announcements (after the first one).

    A swap runs from a version's announcement to the first answer ranked with it; the
    calls that ended in between are "during the swap". A regression is an answer with
    another version after its client has seen the version announced last.
    """
    failures: dict[str, int] = {}
    for call in calls:
        if call.code != "OK":
            failures[call.code] = failures.get(call.code, 0) + 1
    ordered = sorted(calls, key=lambda c: c.ended)
    swaps: list[dict[str, float | str]] = []
    during = 0
    for at, version in announced[1:]:
        served = next((c for c in ordered if c.ended >= at and c.model_version == version), None)
        if served is None:
            continue
        swaps.append({"version": version, "seconds": served.ended - at})
        during += sum(1 for c in ordered if at <= c.ended <= served.ended)
    regressions = 0
    boundaries = [at for at, _ in announced]
    for client in {c.client for c in calls}:
        switched: set[int] = set()  # epochs in which this client has seen the new version
        for call in (c for c in ordered if c.client == client and c.code == "OK"):
            epoch = sum(1 for b in boundaries if b <= call.ended)
            target = announced[epoch - 1][1] if epoch else None
            if call.model_version == target:
                switched.add(epoch)
            elif epoch in switched:
                regressions += 1
    return SwapReport(
        calls=len(calls),
        failed_calls=sum(failures.values()),
        failures=failures,
        calls_during_swap=during,
        version_regressions=regressions,
        swaps=swaps,
    )


@dataclass(frozen=True)
class ColdItem:
    item_id: str
    searchable_s: float | None  # first SimilarItems answer with neighbours
    matched_s: float | None  # first answer whose neighbours pass the genre check
    neighbours: tuple[str, ...] = ()


def cold_item_seconds(
    kafka: KafkaSettings,
    address: str,
    new_items: Sequence[ItemEvent],
    same_genre: Callable[[ItemEvent, Sequence[ranking_pb2.ScoredItem]], bool],
    timeout_s: float = 30.0,
    k: int = 5,
) -> list[ColdItem]:
    """Publish each item, then poll ``SimilarItems`` of it: when it first answers and
    when its neighbours first pass ``same_genre`` (None: not within ``timeout_s``)."""
    topics = Topics.from_settings(kafka)
    producer = make_producer(kafka)
    results: list[ColdItem] = []
    with grpc.insecure_channel(address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
        for item in new_items:
            started = time.time()
            produce(producer, topics.items, item.item_id, item.to_bytes())
            producer.flush(10)
            searchable: float | None = None
            matched: float | None = None
            neighbours: tuple[str, ...] = ()
            while matched is None and time.time() - started < timeout_s:
                try:
                    response = stub.SimilarItems(
                        ranking_pb2.SimilarItemsRequest(item_id=item.item_id, k=k), timeout=5
                    )
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    time.sleep(0.02)
                    continue
                now = time.time() - started
                if response.items and searchable is None:
                    searchable = now
                neighbours = tuple(f"{n.title} {list(n.categories)}" for n in response.items)
                if len(response.items) == k and same_genre(item, response.items):
                    matched = now
                elif searchable is not None and now - searchable > 5.0:
                    break  # indexed, and the neighbours will not change without a new model
                time.sleep(0.02)
            results.append(ColdItem(item.item_id, searchable, matched, neighbours))
    return results


def shares_a_category(
    item: ItemEvent, neighbours: Sequence[ranking_pb2.ScoredItem], at_least: int
) -> bool:
    wanted = set(item.categories)
    return sum(1 for n in neighbours if wanted & set(n.categories)) >= at_least


def majority_shares_a_category(
    item: ItemEvent, neighbours: Sequence[ranking_pb2.ScoredItem]
) -> bool:
    """More than half of the neighbours share at least one category with the item."""
    wanted = set(item.categories)
    sharing = sum(1 for n in neighbours if wanted & set(n.categories))
    return sharing * 2 > len(neighbours)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")
