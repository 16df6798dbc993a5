"""``python -m services.ranking``: run the ranking server until SIGTERM or SIGINT.

With the embedded vector store (``RECSYS_STORE_BACKEND=edge``, the default) the store
lives in this process, so the indexer that fills it runs here too; with a Qdrant server
the indexer is its own deployment and any number of ranking replicas read.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from recsys.lifecycle import freeze_startup_heap, run_async
from recsys.logs import setup_logging
from recsys.observability import HealthServer
from recsys.vectorstore.base import VectorStore
from recsys.vectorstore.factory import open_store
from services.ranking.server import serve
from services.ranking.settings import RankingSettings
from services.ranking.trending import DecayedPopularity, TrendingConsumer

if TYPE_CHECKING:
    from services.indexer.embedded import EmbeddedIndexer

log = logging.getLogger("services.ranking")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run(settings: RankingSettings, store: VectorStore) -> None:
    """Serve until a stop signal, then drain in-flight calls and release everything."""
    indexer: EmbeddedIndexer | None = None
    if settings.store.backend == "edge":
        # Imported here: only the embedded deployment runs the indexer in-process.
        from services.indexer.embedded import start_embedded_indexer

        indexer = start_embedded_indexer(store, settings.kafka)
    http: HealthServer | None = None
    trending: TrendingConsumer | None = None
    if settings.trending:
        trending = TrendingConsumer(
            settings.kafka, DecayedPopularity(), settings.trending_fetch_interval_ms
        ).start()
    try:
        running = await serve(settings, store, trending=trending)
        try:
            if settings.obs.http_port > 0:
                http = HealthServer(
                    settings.obs.http_port, ready=lambda: running.model_serving
                ).start()
            freeze_startup_heap()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in _STOP_SIGNALS:
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
                log.info("stop signal received")
            finally:
                for sig in _STOP_SIGNALS:
                    loop.remove_signal_handler(sig)
        finally:
            await running.stop()
    finally:
        if http is not None:
            http.stop()
        if indexer is not None:
            indexer.stop()
        if trending is not None:
            trending.stop()


def main() -> None:
    settings = RankingSettings()
    setup_logging("ranking", settings.obs.log_level)
    store = open_store(settings.store)
    try:
        run_async(run(settings, store), settings.event_loop)
    finally:
        store.close()


if __name__ == "__main__":
    main()
