"""Entry point: ``python -m services.indexer``, for a Qdrant server (own deployment)."""

from __future__ import annotations

import logging

from recsys.kafka import wait_for_broker
from recsys.lifecycle import freeze_startup_heap, stop_on_signals
from recsys.logs import setup_logging
from recsys.observability import start_health
from recsys.vectorstore.factory import open_store
from services.indexer.settings import IndexerSettings
from services.indexer.writer import IndexWriter

log = logging.getLogger("services.indexer")


def main() -> None:
    settings = IndexerSettings()
    setup_logging("indexer", settings.obs.log_level)
    stop = stop_on_signals()
    health = start_health(settings.obs.http_port, lambda: True)
    wait_for_broker(settings.kafka)
    store = open_store(settings.store)
    writer = IndexWriter(store, settings)
    freeze_startup_heap()
    try:
        writer.run(stop)
    finally:
        writer.close()
        store.close()
        if health:
            health.stop()


if __name__ == "__main__":
    main()
