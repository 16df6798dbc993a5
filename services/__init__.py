"""The recommender's services, one package each: feature, inference, indexer, ranking, trainer."""
