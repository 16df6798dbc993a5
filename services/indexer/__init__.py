"""Indexer: the only writer to the vector store; replays the vector topics into it."""
