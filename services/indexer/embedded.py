"""The indexer inside the ranking process, for the embedded store (one process per path)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from recsys.settings import KafkaSettings
from recsys.vectorstore import VectorStore
from services.indexer.settings import IndexerSettings
from services.indexer.writer import IndexWriter

log = logging.getLogger(__name__)


class EmbeddedIndexer:
    def __init__(self, writer: IndexWriter) -> None:
        self.writer = writer
        self._stop = threading.Event()
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="indexer", daemon=True)

    def _run(self) -> None:
        try:
            self.writer.run(self._stop)
        except Exception:
            # Crash-only: the process restarts and replays from the last committed offsets,
            # rather than serving from an index that silently stopped following the topics.
            log.exception("embedded indexer failed; stopping the process")
            self.failed = True
            os.kill(os.getpid(), signal.SIGTERM)

    def start(self) -> EmbeddedIndexer:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self.writer.close()


def start_embedded_indexer(store: VectorStore, kafka: KafkaSettings) -> EmbeddedIndexer:
    settings = IndexerSettings(kafka=kafka)
    return EmbeddedIndexer(IndexWriter(store, settings)).start()
