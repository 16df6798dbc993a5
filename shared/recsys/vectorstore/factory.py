"""Pick the vector-store backend from settings, so services never name one directly."""

from __future__ import annotations

from recsys.settings import StoreSettings
from recsys.vectorstore.base import VectorStore


def open_store(settings: StoreSettings) -> VectorStore:
    """Backends are imported here, lazily, so importing the package loads neither engine."""
    if settings.backend == "edge":
        from recsys.vectorstore.edge import EdgeVectorStore

        return EdgeVectorStore(
            settings.path, settings.hnsw_ef, flush_interval_s=settings.flush_interval_s
        )
    if settings.backend == "qdrant":
        if not settings.url:
            raise ValueError("RECSYS_STORE_URL must be set when RECSYS_STORE_BACKEND=qdrant")
        from qdrant_client import QdrantClient

        from recsys.vectorstore.qdrant_server import QdrantServerStore

        client = QdrantClient(url=settings.url, api_key=settings.api_key or None)
        return QdrantServerStore(client, hnsw_ef=settings.hnsw_ef)
    raise ValueError(f"unknown vector store backend {settings.backend!r}: use edge or qdrant")
