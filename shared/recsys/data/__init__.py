"""Datasets as project events: MovieLens-100K (``recsys.data.movielens``), the reference.

Submodules are not imported here, so ``python -m recsys.data.movielens`` runs cleanly and
importing the package costs nothing.
"""
