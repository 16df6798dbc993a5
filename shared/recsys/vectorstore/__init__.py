"""Vector store: one interface, two Qdrant backends (embedded engine, server client)."""

from recsys.vectorstore.base import (
    CollectionNotFound,
    Filter,
    Range,
    SearchHit,
    VectorRecord,
    VectorStore,
)
from recsys.vectorstore.factory import open_store

__all__ = [
    "CollectionNotFound",
    "Filter",
    "Range",
    "SearchHit",
    "VectorRecord",
    "VectorStore",
    "open_store",
]
