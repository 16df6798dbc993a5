"""The local stack's readiness wait asks the ranking service's health status before it
calls Recommend, so a stack that is still training logs no refused calls."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recsys.client import SERVICE_NAME
from recsys.devstack.demo import model_serving, personalised_ready


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_the_ranking_service_is_ready_only_once_its_health_says_a_model_serves(
    health_server: tuple[health.HealthServicer, str],
) -> None:
    servicer, address = health_server
    assert SERVICE_NAME == "recsys.v1.RankingService"
    with grpc.insecure_channel(address) as channel:
        assert not model_serving(channel)  # status not set yet: NOT_FOUND
        servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert not model_serving(channel)
        # Not ready, and no Recommend was sent (this server has no ranking service: a
        # call would fail with UNIMPLEMENTED and raise).
        assert not personalised_ready(channel, ["1"])
        servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        assert model_serving(channel)


def test_no_server_is_not_ready() -> None:
    with grpc.insecure_channel("127.0.0.1:9") as channel:
        assert not model_serving(channel)
