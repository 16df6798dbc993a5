"""Optional bearer-token authentication and TLS for the ranking server.

With tokens configured, every call must carry ``authorization: Bearer <token>`` metadata
matching one of them, or it is answered UNAUTHENTICATED before any handler runs. The
health service stays open, so Kubernetes probes and load balancers need no secret.
Several tokens may be valid at once, which lets a token be rotated without downtime.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health

from services.ranking.settings import RankingSettings

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
_BEARER = "bearer "
# Calls to these services never need a token.
OPEN_SERVICES = frozenset({health.SERVICE_NAME})


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if (
            key == AUTHORIZATION_KEY
            and isinstance(value, str)
            and value[: len(_BEARER)].lower() == _BEARER
        ):
            return value[len(_BEARER) :].strip()
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a valid token; constant-time comparison."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        if not self._tokens:
            raise ValueError("BearerTokenInterceptor needs at least one non-empty token")

    def _valid(self, token: str | None) -> bool:
        if token is None:
            return False
        given = token.encode()
        # compare with every token so the time taken does not say which one matched
        return any([hmac.compare_digest(given, t) for t in self._tokens])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        service = details.method.lstrip("/").split("/", 1)[0]
        if service in OPEN_SERVICES:
            return await continuation(details)
        token = bearer_token(details.invocation_metadata)
        if self._valid(token):
            return await continuation(details)
        message = (
            "missing bearer token: send 'authorization: Bearer <token>' metadata"
            if token is None
            else "invalid bearer token"
        )
        log.warning("call refused", extra={"method": details.method, "error": message})
        return _refusal(message)


def _refusal(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # Streaming variants are not needed: every method of the API is unary-unary, and
    # reflection is refused before its stream starts.
    return grpc.unary_unary_rpc_method_handler(refuse)


def interceptors(settings: RankingSettings) -> list[grpc.aio.ServerInterceptor]:
    tokens = [t.get_secret_value() for t in settings.auth_tokens]
    if not tokens:
        return []
    log.info("bearer-token authentication on", extra={"tokens": len(tokens)})
    return [BearerTokenInterceptor(tokens)]


def server_credentials(settings: RankingSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate and key are configured; None for plaintext."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError(
            "TLS needs both RECSYS_RANKING_TLS_CERT_FILE and RECSYS_RANKING_TLS_KEY_FILE"
        )
    key = _read(settings.tls_key_file, "RECSYS_RANKING_TLS_KEY_FILE")
    cert = _read(settings.tls_cert_file, "RECSYS_RANKING_TLS_CERT_FILE")
    client_ca = (
        None
        if settings.tls_client_ca_file is None
        else _read(settings.tls_client_ca_file, "RECSYS_RANKING_TLS_CLIENT_CA_FILE")
    )
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
