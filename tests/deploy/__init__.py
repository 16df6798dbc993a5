"""Checks of the deployment files (deploy/, docker-compose*.yml) against the code."""
