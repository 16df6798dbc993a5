"""Trainer: turns the event log into a new model version in the artifact store."""
