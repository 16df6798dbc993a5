"""The local stack behind `make run`: a Kafka-protocol broker, the services, a demo."""
