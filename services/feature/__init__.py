"""Feature service: keeps each user's recent interactions and publishes them."""
