"""``recsys.client`` and the ``recsys`` query commands against a real ranking server.

The server runs on the test's event loop (the fixtures of ``test_ranking_grpc``), so the
synchronous client and ``cli.main`` are called from a worker thread (``asyncio.to_thread``);
the asyncio client is awaited directly.
"""

# The server fixtures are imported by name, so each test parameter "redefines" one.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from recsys import cli
from recsys.client import (
    AsyncRankingClient,
    InvalidArgumentError,
    ItemFilter,
    NotFoundError,
    RankingClient,
    UnauthenticatedError,
    UnavailableError,
)
from recsys.devstack.ports import free_port
from recsys.vectorstore.base import VectorStore
from services.ranking.server import SERVICE_NAME, RunningServer, serve
from tests.integration.test_ranking_grpc import (
    POPULAR,
    Client,
    make_settings,
    publish_model,
    serving,  # noqa: F401 (fixture)
    started,  # noqa: F401 (fixture)
    store,  # noqa: F401 (fixture)
    write_popularity,
    write_users,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

Serving = tuple[RunningServer, Client]


@pytest.fixture
def backend() -> str:
    """The client never sees the store: one backend (the embedded one) is enough here."""
    return "edge"


def _target(running: RunningServer) -> str:
    return f"127.0.0.1:{running.port}"


async def _cli(*argv: str) -> int:
    # main() blocks on a synchronous channel: keep the event loop free for the server.
    return await asyncio.to_thread(cli.main, list(argv))


# --- the synchronous client -----------------------------------------------------------


async def test_recommend_returns_the_ranked_items(serving: Serving) -> None:
    running, _ = serving
    with RankingClient(_target(running)) as client:
        response = await asyncio.to_thread(client.recommend, "alice", 3, request_id="req-c1")

    assert [item.item_id for item in response.items] == ["i2", "i4", "i5"]
    assert response.items[0].title == "GoldenEye (1995)"
    assert list(response.items[0].categories) == ["Action"]
    assert response.model_version == "v1"
    assert not response.fallback
    assert response.request_id == "req-c1"


async def test_unknown_user_gets_the_fallback(serving: Serving) -> None:
    running, _ = serving
    with RankingClient(_target(running)) as client:
        response = await asyncio.to_thread(client.recommend, "nobody", 3)
    assert response.fallback
    assert response.fallback_reason == "unknown user: most popular items"
    assert [item.item_id for item in response.items] == POPULAR[:3]


@pytest.mark.parametrize(("user_id", "k", "field"), [("alice", 0, "k"), ("", 3, "user_id")])
async def test_invalid_argument_names_the_field(
    serving: Serving, user_id: str, k: int, field: str
) -> None:
    running, _ = serving
    with RankingClient(_target(running)) as client, pytest.raises(InvalidArgumentError) as caught:
        await asyncio.to_thread(client.recommend, user_id, k, request_id="req-bad")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"{field} ")
    assert error.request_id == "req-bad"
    assert isinstance(error.__cause__, grpc.RpcError)


# --- the asyncio client -------------------------------------------------------------


async def test_async_client(serving: Serving) -> None:
    running, _ = serving
    async with AsyncRankingClient(_target(running)) as client:
        response = await client.recommend("alice", 2)
        assert [item.item_id for item in response.items] == ["i2", "i4"]
        with pytest.raises(InvalidArgumentError) as caught:
            await client.recommend("alice", 1001)
    assert caught.value.details.startswith("k ")
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


# --- retries and metadata -----------------------------------------------------------


class Refuse(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts RankingService calls and their metadata; answers the first ``failures``
    of them UNAVAILABLE, as a server that is not ready yet would."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.metadata: list[dict[str, str]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(details)
        self.calls += 1
        self.metadata.append(dict(details.invocation_metadata or ()))
        if self.calls > self.failures:
            return await continuation(details)

        async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
def catalogue(store: VectorStore, tmp_path: Path) -> VectorStore:
    """The store filled as for ``serving``, for tests that start their own server."""
    publish_model(store)
    write_users(store)
    write_popularity(tmp_path / "artifacts")
    return store


@pytest.fixture
async def start_server(
    catalogue: VectorStore, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Starts a serving server (extra ``RankingSettings`` fields, interceptors); stops it after."""
    servers: list[RunningServer] = []

    async def start(
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (), **settings: Any
    ) -> RunningServer:
        running = await serve(
            make_settings(tmp_path, **settings), catalogue, interceptors=interceptors
        )
        servers.append(running)
        return running

    yield start
    for running in servers:
        await running.stop(grace=0)


async def test_unavailable_is_retried_until_an_answer(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    refuse = Refuse(2)
    running = await start_server(interceptors=[refuse])
    with RankingClient(_target(running), retries=2, initial_backoff_s=0.05) as client:
        response = await asyncio.to_thread(client.recommend, "alice", 1)
    assert [item.item_id for item in response.items] == ["i2"]
    assert refuse.calls == 3


async def test_retries_end_with_unavailable(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    refuse = Refuse(10)
    running = await start_server(interceptors=[refuse])
    client = RankingClient(_target(running), retries=2, initial_backoff_s=0.05)
    with client, pytest.raises(UnavailableError) as caught:
        await asyncio.to_thread(client.recommend, "alice", 1)
    assert caught.value.details == "warming up"
    assert refuse.calls == 3


async def test_no_retries_when_disabled_or_for_other_codes(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    refuse = Refuse(1)
    running = await start_server(interceptors=[refuse])
    with RankingClient(_target(running), retries=0) as client, pytest.raises(UnavailableError):
        await asyncio.to_thread(client.recommend, "alice", 1)
    assert refuse.calls == 1
    client = RankingClient(_target(running), retries=4, initial_backoff_s=0.05)
    with client, pytest.raises(InvalidArgumentError):
        await asyncio.to_thread(client.recommend, "alice", 0)
    assert refuse.calls == 2  # INVALID_ARGUMENT is final: one more call, no retry


async def test_token_request_id_and_user_agent_are_sent(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    refuse = Refuse(0)
    running = await start_server(interceptors=[refuse])
    async with AsyncRankingClient(_target(running), token="s3cret") as client:
        await client.recommend("alice", 1, request_id="req-meta")
    (metadata,) = refuse.metadata
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-request-id"] == "req-meta"
    assert metadata["user-agent"].startswith("recsys-client/")


async def test_a_server_that_starts_late_is_reached_by_retrying(
    catalogue: VectorStore, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    # Backoffs long enough that a retry comes after the channel's reconnect (made quick
    # here) has found the server; the deadline bounds the whole call.
    client = RankingClient(
        f"127.0.0.1:{settings.port}",
        timeout_s=15,
        retries=4,
        initial_backoff_s=1.0,
        max_backoff_s=2.0,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 200),
        ],
    )
    started_at = time.monotonic()
    call = asyncio.ensure_future(asyncio.to_thread(client.recommend, "alice", 1))
    running: RunningServer | None = None
    try:
        await asyncio.sleep(0.3)
        assert not call.done()  # still retrying: nothing listened yet
        running = await serve(settings, catalogue)
        response = await asyncio.wait_for(call, 20)
        assert [item.item_id for item in response.items] == ["i2"]
        assert time.monotonic() - started_at < 15
    finally:
        client.close()
        if running is not None:
            await running.stop(grace=0)


async def test_nothing_listening_is_unavailable_without_a_request_id() -> None:
    client = RankingClient(f"127.0.0.1:{free_port()}", retries=1, timeout_s=5)
    with client, pytest.raises(UnavailableError) as caught:
        await asyncio.to_thread(client.recommend, "alice", 1)
    assert caught.value.request_id is None


# --- TLS ----------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_with_the_servers_certificate(
    start_server: Callable[..., Awaitable[RunningServer]], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    running = await start_server(tls_cert_file=cert, tls_key_file=key)
    with RankingClient(f"localhost:{running.port}", root_certificates=cert) as client:
        response = await asyncio.to_thread(client.recommend, "alice", 1)
    assert [item.item_id for item in response.items] == ["i2"]
    # Plaintext to a TLS port, or TLS trusting only the system roots: no call gets through.
    for tls in (False, True):
        client = RankingClient(f"localhost:{running.port}", retries=0, tls=tls)
        with client, pytest.raises(UnavailableError):
            await asyncio.to_thread(client.recommend, "alice", 1)


async def test_mutual_tls_with_a_client_certificate(
    start_server: Callable[..., Awaitable[RunningServer]], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    # The self-signed certificate is its own CA: it serves, and it vouches for the client.
    running = await start_server(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=cert)
    target = f"localhost:{running.port}"
    mutual = RankingClient(target, root_certificates=cert, certificate_chain=cert, private_key=key)
    with mutual:
        response = await asyncio.to_thread(mutual.recommend, "alice", 1)
    assert [item.item_id for item in response.items] == ["i2"]
    anonymous = RankingClient(target, root_certificates=cert, retries=0)
    with anonymous, pytest.raises(UnavailableError):
        await asyncio.to_thread(anonymous.recommend, "alice", 1)


# --- bearer tokens ------------------------------------------------------------------


async def test_bearer_token(start_server: Callable[..., Awaitable[RunningServer]]) -> None:
    running = await start_server(auth_tokens=["s3cret", "next-s3cret"])
    with RankingClient(_target(running), token="next-s3cret") as client:
        response = await asyncio.to_thread(client.recommend, "alice", 1)
    assert [item.item_id for item in response.items] == ["i2"]
    for token, message in ((None, "missing bearer token"), ("wrong", "invalid bearer token")):
        client = RankingClient(_target(running), token=token)
        with client, pytest.raises(UnauthenticatedError) as caught:
            await asyncio.to_thread(client.recommend, "alice", 1)
        assert caught.value.details.startswith(message)


async def test_cli_token_from_the_option_or_the_environment(
    start_server: Callable[..., Awaitable[RunningServer]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = await start_server(auth_tokens=["s3cret"])
    target = _target(running)
    assert await _cli("recommend", "--user", "alice", "--target", target) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == (
        f"error: the ranking server at {target} refused the call: missing bearer token: "
        "send 'authorization: Bearer <token>' metadata (pass --token or set "
        "RECSYS_RANKING_TOKEN)\n"
    )
    assert await _cli("recommend", "--user", "alice", "--target", target, "--token", "s3cret") == 0
    assert "GoldenEye (1995)" in capsys.readouterr().out
    monkeypatch.setenv("RECSYS_RANKING_TOKEN", "s3cret")
    assert await _cli("recommend", "--user", "alice", "--target", target) == 0
    assert "GoldenEye (1995)" in capsys.readouterr().out


# --- the CLI ------------------------------------------------------------------------


async def test_cli_recommend_prints_a_table(
    serving: Serving, capsys: pytest.CaptureFixture[str]
) -> None:
    running, _ = serving
    code = await _cli("recommend", "--user", "alice", "--k", "3", "--target", _target(running))
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("model v1, 3 items, request ")
    assert lines[1].split() == ["rank", "item", "score", "title", "categories"]
    rows = [line.split(maxsplit=3) for line in lines[2:]]
    assert [row[:2] for row in rows] == [["1", "i2"], ["2", "i4"], ["3", "i5"]]
    assert "GoldenEye (1995)" in lines[2]
    assert lines[2].rstrip().endswith("Action")
    assert "Get Shorty (1995)" in lines[3]
    assert lines[3].rstrip().endswith("Comedy, Drama")


async def test_cli_reads_the_target_from_the_environment_and_shows_the_fallback(
    serving: Serving, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, _ = serving
    monkeypatch.setenv("RECSYS_RANKING_TARGET", _target(running))
    code = await _cli("recommend", "--user", "nobody", "--k", "2", "--request-id", "req-cli")
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == "model v1, 2 items, request req-cli"
    assert lines[1] == "fallback: unknown user: most popular items"
    assert "Copycat (1995)" in lines[3]


async def test_cli_json(serving: Serving, capsys: pytest.CaptureFixture[str]) -> None:
    running, _ = serving
    code = await _cli(
        "recommend", "--user", "alice", "--k", "2", "--json", "--target", _target(running)
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert [item["item_id"] for item in document["items"]] == ["i2", "i4"]
    assert document["items"][0]["title"] == "GoldenEye (1995)"
    assert document["model_version"] == "v1"
    assert document["fallback"] is False  # every field is printed, defaults included


async def test_cli_invalid_argument_is_shown_as_is(
    serving: Serving, capsys: pytest.CaptureFixture[str]
) -> None:
    running, _ = serving
    code = await _cli("recommend", "--user", "alice", "--k", "0", "--target", _target(running))
    assert code == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: k is 0: ask for between 1 and 1000 items\n"


async def test_cli_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    code = await _cli("popular", "--target", target, "--timeout", "5")
    assert code == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith(f"error: the ranking server at {target} cannot be reached")
    assert err.count("\n") == 1


async def test_cli_no_model_yet(
    started: tuple[RunningServer, Client, VectorStore], capsys: pytest.CaptureFixture[str]
) -> None:
    running, _, _ = started
    target = _target(running)
    code = await _cli("recommend", "--user", "alice", "--target", target, "--request-id", "r9")
    assert code == cli.EXIT_FAILURE
    assert capsys.readouterr().err == (
        f"error: the ranking server at {target} is unavailable: "
        "no model is serving yet (request id r9)\n"
    )


# --- the other methods --------------------------------------------


async def test_recommend_with_a_filter(serving: Serving) -> None:
    running, _ = serving
    with RankingClient(_target(running)) as client:
        response = await asyncio.to_thread(
            client.recommend, "alice", 5, filter=ItemFilter(categories_any=["Comedy"])
        )
    assert [item.item_id for item in response.items] == ["i4"]  # i1 is seen


async def test_similar_items(serving: Serving) -> None:
    running, _ = serving
    with RankingClient(_target(running)) as client:
        response = await asyncio.to_thread(client.similar_items, "i1", 2)
        with pytest.raises(NotFoundError):
            await asyncio.to_thread(client.similar_items, "no-such-item", 2)
    # Nearest to i1 by angle, i1 itself never returned.
    assert [item.item_id for item in response.items] == ["i2", "i3"]


async def test_popular(serving: Serving) -> None:
    running, _ = serving
    async with AsyncRankingClient(_target(running)) as client:
        response = await client.popular(3, window="all_time")
    assert [item.item_id for item in response.items] == POPULAR[:3]
    assert response.model_version == "v1"


async def test_batch_recommend_answers_in_request_order(serving: Serving) -> None:
    running, _ = serving
    with RankingClient(_target(running)) as client:
        response = await asyncio.to_thread(client.batch_recommend, ["alice", "nobody", "alice"], 2)
    assert [r.user_id for r in response.results] == ["alice", "nobody", "alice"]
    assert [item.item_id for item in response.results[0].items] == ["i2", "i4"]
    assert response.results[1].fallback
    assert [item.item_id for item in response.results[1].items] == POPULAR[:2]
    assert response.results[2] == response.results[0]
    assert response.model_version == "v1"


async def test_recommend_for_session_leaves_out_the_sessions_items(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    # No inference service behind it: the session is answered with popular items, which
    # still shows the request's events arrived (they are left out).
    running = await start_server(inference_target=f"127.0.0.1:{free_port()}")
    with RankingClient(_target(running)) as client:
        response = await asyncio.to_thread(
            client.recommend_for_session, [("i1", "view"), ("i3", "purchase")], 3
        )
    assert response.fallback
    assert [item.item_id for item in response.items] == [
        i for i in POPULAR if i not in {"i1", "i3"}
    ][:3]


async def test_cli_similar_popular_and_session(
    start_server: Callable[..., Awaitable[RunningServer]], capsys: pytest.CaptureFixture[str]
) -> None:
    running = await start_server(inference_target=f"127.0.0.1:{free_port()}")
    target = _target(running)
    assert await _cli("similar", "--item", "i1", "--k", "2", "--target", target) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[2:]] == ["i2", "i3"]
    assert "GoldenEye (1995)" in lines[2]
    assert await _cli("popular", "--k", "2", "--window", "all_time", "--target", target) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[2:]] == POPULAR[:2]
    assert "Copycat (1995)" in lines[2]
    assert await _cli("similar", "--item", "nope", "--target", target) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == (
        "error: item_id 'nope' is not in the catalogue of model v1\n"
    )
    code = await _cli(
        "session", "--event", "i1:view", "--event", "i3:purchase", "--k", "2", "--target", target
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].startswith("model v1, 2 items")
    assert lines[1].startswith("fallback: ")
    assert [line.split()[1] for line in lines[3:]] == ["i5", "i6"]
