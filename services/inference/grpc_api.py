"""The inference service's gRPC API: ``Embed`` a sequence with the serving model.

Runs on a thread pool beside the Kafka loop; both read the same ``ServingModel`` (an
onnxruntime session is safe to call from several threads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recsys.events import EVENT_TYPES, MAX_ID_LENGTH
from recsys.v1 import inference_pb2, inference_pb2_grpc
from services.inference.model_state import ServingModel

log = logging.getLogger(__name__)

SERVICE_NAME = "recsys.v1.InferenceService"
MAX_INTERACTIONS = 1_000


class InvalidRequest(ValueError):
    pass


def validate(request: inference_pb2.EmbedRequest) -> list[tuple[str, str]]:
    if not request.interactions:
        raise InvalidRequest("interactions: give at least one interaction, oldest first")
    if len(request.interactions) > MAX_INTERACTIONS:
        raise InvalidRequest(
            f"interactions: at most {MAX_INTERACTIONS}, got {len(request.interactions)}"
        )
    pairs: list[tuple[str, str]] = []
    for n, interaction in enumerate(request.interactions):
        if not 0 < len(interaction.item_id) <= MAX_ID_LENGTH:
            raise InvalidRequest(f"interactions[{n}].item_id: 1..{MAX_ID_LENGTH} characters")
        if interaction.event_type not in EVENT_TYPES:
            raise InvalidRequest(
                f"interactions[{n}].event_type: one of {', '.join(EVENT_TYPES)}, "
                f"got {interaction.event_type!r}"
            )
        pairs.append((interaction.item_id, interaction.event_type))
    return pairs


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's abort raises")  # pragma: no cover


class Embedder(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, model: Callable[[], ServingModel | None]) -> None:
        self._model = model

    def Embed(
        self, request: inference_pb2.EmbedRequest, context: grpc.ServicerContext
    ) -> inference_pb2.EmbedResponse:
        try:
            pairs = validate(request)
        except InvalidRequest as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        model = self._model()
        if model is None:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
        vector, known = model.encode_interactions(pairs)
        if vector is None:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"none of the {len(pairs)} items is known to model {model.version}",
            )
        return inference_pb2.EmbedResponse(
            vector=vector.tolist(), model_version=model.version, known_items=known
        )


class EmbedServer:
    """A gRPC server with Embed, health (SERVING once a model is loaded) and reflection."""

    def __init__(
        self, model: Callable[[], ServingModel | None], port: int, threads: int = 4
    ) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(Embedder(model), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = (
            inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
            reflection.SERVICE_NAME,
            health.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self._server)
        self.port = self._server.add_insecure_port(f"0.0.0.0:{port}")
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    def start(self) -> EmbedServer:
        self._server.start()
        log.info("embed gRPC server listening", extra={"port": self.port})
        return self

    def model_ready(self) -> None:
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()
