"""Helpers for tests that read topics back."""
