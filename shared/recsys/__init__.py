"""recsys: the common package shared by every service of the real-time recommender."""

__version__ = "0.1.0"
