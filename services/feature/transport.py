"""The feature worker's Kafka transport: faust's aiokafka driver, changed in three ways.

- Each acknowledged partition reaches the agent contiguously (contiguous.py).
- The longest time the broker may hold a fetch comes from ``KafkaSettings``, as it does
  for every other consumer here. faust fixes it at 1,500 ms, and a broker that holds a
  fetch for its full wait even while records arrive (Tansu does) then delays events by
  hundreds of milliseconds at any rate: 670 ms median at 100 events/s, against 44 ms
  with a 100 ms wait.
- Handing a fetched message to its stream costs no tasks when the stream's queue has
  room (:meth:`FeatureConsumer.wait_first`). faust races each delivery against a flow
  stop in four new tasks, and that was about a sixth of the worker's CPU.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitArgT, WaitResults

from services.feature.contiguous import ContiguousConsumer


class _SettingsFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts and builds its fetcher, which is after this.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


@types.coroutine
def _carry_on(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """Carry on a coroutine that was stepped by hand and is waiting on ``pending``: what a
    task would do with it from here."""
    while True:
        try:
            received = yield pending
        except BaseException as exc:  # thrown in by the awaiting task (a cancel)
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(received)
            except StopIteration as stop:
                return stop.value


async def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    # (a native coroutine: mode.Service.wait_first takes Awaitables, and a generator-based
    # coroutine is not one)
    return await _carry_on(coro, pending)


class FeatureConsumer(ContiguousConsumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _SettingsFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: WaitArgT, timeout: Any = None) -> WaitResults:  # noqa: ASYNC109 (mode's signature)
        """faust's fetcher delivers every message as ``wait_first(deliver(message),
        suspend_flow.wait())``: both, and the service's stop and crash events, become
        tasks, raced in ``asyncio.wait``. The delivery almost always finishes without
        waiting (its stream's queue has room), so it is stepped here first: if it is done,
        that is the result, with no task made. If it has to wait (a full queue), the rest
        of it is raced exactly as faust does, so a flow stop still interrupts it. A stopped
        flow or service takes faust's path from the start.
        """
        if (
            timeout is not None
            or len(coros) != 2
            or not all(isinstance(c, Coroutine) for c in coros)
            or self.suspend_flow.is_set()
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await super().wait_first(*coros, timeout=timeout)
        deliver, other = coros
        assert isinstance(deliver, Coroutine) and isinstance(other, Coroutine)
        try:
            pending = deliver.send(None)
        except StopIteration as stop:
            other.close()  # never started: nothing to cancel
            return WaitResults([deliver], [stop.value], False)
        except BaseException:
            other.close()
            raise
        return await super().wait_first(_resume(deliver, pending), other)  # (timeout is None)


class FeatureTransport(faust_aiokafka.Transport):
    Consumer = FeatureConsumer

    def __init__(self, app: faust.App, fetch_max_wait_ms: int) -> None:
        super().__init__(app.conf.broker_consumer, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms


def use_feature_transport(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app`` consume through :class:`FeatureConsumer` (before it creates one)."""
    app.transport = FeatureTransport(app, fetch_max_wait_ms)
