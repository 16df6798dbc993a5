"""Session vectors from the inference service's ``Embed`` call.

Ranking keeps no model: an anonymous session is encoded by inference, which serves the
same ONNX user tower that wrote every stored user vector. A failure here is never the
caller's fault, so it surfaces as :class:`EmbedUnavailable` and the servicer answers with
popular items (flagged) instead of an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from recsys.logs import correlation_id
from recsys.v1 import inference_pb2, inference_pb2_grpc
from services.ranking.requests import SessionEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionVector:
    vector: np.ndarray
    model_version: str
    known_items: int


class EmbedUnavailable(RuntimeError):
    """No session vector: inference is down, slow, or knows none of the items."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class Embedder:
    """A lazily opened channel to ``InferenceService`` at ``target``."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: inference_pb2_grpc.InferenceServiceStub | None = None

    def _client(self) -> inference_pb2_grpc.InferenceServiceStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target)
            self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def embed(
        self, events: Sequence[SessionEvent], time_left_s: float | None = None
    ) -> SessionVector:
        timeout = self.timeout_s if time_left_s is None else min(self.timeout_s, time_left_s)
        request = inference_pb2.EmbedRequest(
            interactions=[
                inference_pb2.Interaction(item_id=e.item_id, event_type=e.event_type)
                for e in events
            ]
        )
        metadata = (("x-request-id", correlation_id.get() or ""),)
        try:
            response = await self._client().Embed(
                request, timeout=max(timeout, 0.001), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise EmbedUnavailable(
                    "session_unknown_items", "none of the session's items is known to the model"
                ) from exc
            log.warning(
                "Embed failed",
                extra={"target": self.target, "code": code.name, "error": exc.details()},
            )
            raise EmbedUnavailable(
                "inference_unavailable",
                f"the inference service at {self.target} answered {code.name}",
            ) from exc
        vector = np.asarray(response.vector, dtype=np.float32)
        if vector.size == 0:
            raise EmbedUnavailable("inference_unavailable", "the inference service sent no vector")
        return SessionVector(vector, response.model_version, response.known_items)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
