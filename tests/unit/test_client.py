"""The ranking client's parts that need no server: requests, options, errors, the table."""

from __future__ import annotations

import json
import pickle
from typing import Any

import grpc
import pytest

from recsys import cli
from recsys.client import (
    MAX_RETRIES,
    WINDOWS,
    DeadlineExceededError,
    Diversity,
    InvalidArgumentError,
    ItemFilter,
    NotFoundError,
    RankingClient,
    RankingError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    batch_recommend_request,
    call_metadata,
    channel_options,
    error_from_rpc,
    popular_request,
    recommend_request,
    service_config,
    session_request,
    similar_items_request,
)
from recsys.v1 import ranking_pb2

# --- filter and request building ----------------------------------------------------


def test_item_filter_to_proto() -> None:
    message = ItemFilter(
        categories_any=["Comedy", "Drama"],
        categories_none=("Horror",),
        ranges={"year": (1990, 1999), "price": (None, 20), "rating": (3.5, None)},
        available=True,
    ).to_proto()

    assert list(message.categories_any) == ["Comedy", "Drama"]
    assert list(message.categories_none) == ["Horror"]
    year, price, rating = message.ranges
    assert (year.attribute, year.min, year.max) == ("year", 1990, 1999)
    # An open bound is left unset (optional field), not sent as 0.
    assert price.attribute == "price"
    assert not price.HasField("min")
    assert price.max == 20
    assert rating.min == 3.5
    assert not rating.HasField("max")
    assert message.HasField("available")
    assert message.available


def test_item_filter_leaves_unset_conditions_unset() -> None:
    assert ItemFilter().to_proto() == ranking_pb2.ItemFilter()
    unavailable = ItemFilter(available=False).to_proto()
    assert unavailable.HasField("available")
    assert not unavailable.available


def test_a_lone_string_is_one_value_not_its_characters() -> None:
    assert list(ItemFilter(categories_any="Comedy").to_proto().categories_any) == ["Comedy"]
    request = batch_recommend_request("alice", 3, exclude_item_ids="i1")
    assert list(request.user_ids) == ["alice"]
    assert list(request.exclude_item_ids) == ["i1"]


def test_recommend_request_defaults_send_nothing_optional() -> None:
    request = recommend_request("alice", 5)
    assert (request.user_id, request.k) == ("alice", 5)
    assert not request.HasField("filter")
    assert not request.HasField("diversity")
    # Unset exclude_seen means "exclude" on the server; only an explicit choice is sent.
    assert not request.HasField("exclude_seen")
    assert not request.explain


def test_recommend_request_carries_every_option() -> None:
    request = recommend_request(
        "alice",
        5,
        filter=ItemFilter(categories_any=["Comedy"]),
        exclude_item_ids=["i1", "i2"],
        exclude_seen=False,
        diversity=Diversity(mmr=0.3, max_per_category=2),
        explain=True,
    )
    assert list(request.filter.categories_any) == ["Comedy"]
    assert list(request.exclude_item_ids) == ["i1", "i2"]
    assert request.HasField("exclude_seen")
    assert not request.exclude_seen
    assert request.diversity.mmr == pytest.approx(0.3)
    assert request.diversity.max_per_category == 2
    assert request.explain


def test_protobuf_parts_pass_through_and_a_float_is_the_mmr_strength() -> None:
    proto_filter = ranking_pb2.ItemFilter(categories_none=["Horror"])
    request = similar_items_request("i1", 3, filter=proto_filter, diversity=0.5)
    assert request.filter == proto_filter
    assert request.diversity == ranking_pb2.Diversity(mmr=0.5)
    assert request.item_id == "i1"


def test_session_events_from_tuples_or_messages() -> None:
    request = session_request(
        [("50", "view"), ranking_pb2.SessionEvent(item_id="181", event_type="purchase")], 4
    )
    assert [(e.item_id, e.event_type) for e in request.events] == [
        ("50", "view"),
        ("181", "purchase"),
    ]
    assert request.k == 4


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("all_time", ranking_pb2.POPULARITY_WINDOW_ALL_TIME),
        ("hour", ranking_pb2.POPULARITY_WINDOW_HOUR),
        ("day", ranking_pb2.POPULARITY_WINDOW_DAY),
        ("week", ranking_pb2.POPULARITY_WINDOW_WEEK),
        (ranking_pb2.POPULARITY_WINDOW_DAY, ranking_pb2.POPULARITY_WINDOW_DAY),
    ],
)
def test_popularity_windows(window: Any, expected: int) -> None:
    assert popular_request(3, window=window).window == expected


def test_an_unknown_window_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="all_time"):
        popular_request(3, window="month")  # type: ignore[arg-type]


def test_the_cli_offers_exactly_the_clients_windows() -> None:
    assert tuple(WINDOWS) == cli.POPULARITY_WINDOWS


# --- channel options and metadata ---------------------------------------------------


def test_service_config_retries_only_unavailable_for_the_ranking_service() -> None:
    config = service_config(2, initial_backoff_s=0.1, max_backoff_s=1.0)
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "recsys.v1.RankingService"}]
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == 3  # the first try and two retries
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["initialBackoff"] == "0.100s"
    assert policy["maxBackoff"] == "1.000s"
    assert policy["backoffMultiplier"] == 2
    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}


def test_no_retries_means_no_retry_policy() -> None:
    config = service_config(0)
    assert "retryPolicy" not in config["methodConfig"][0]
    assert "retryThrottling" not in config


@pytest.mark.parametrize(
    ("retries", "initial", "maximum"), [(-1, 0.1, 1.0), (MAX_RETRIES + 1, 0.1, 1.0), (2, 0, 1.0)]
)
def test_out_of_range_retry_settings_are_refused(
    retries: int, initial: float, maximum: float
) -> None:
    with pytest.raises(ValueError):
        service_config(retries, initial, maximum)


def test_channel_options() -> None:
    options = channel_options(
        retries=1, max_receive_message_bytes=1234, extra=[("grpc.max_receive_message_length", 99)]
    )
    values = dict(options)
    config = json.loads(values["grpc.service_config"])
    assert config["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 2
    assert values["grpc.enable_retries"] == 1
    assert values["grpc.primary_user_agent"].startswith("recsys-client/")
    # Extra options come last, so gRPC applies them over the defaults.
    assert options.index(("grpc.max_receive_message_length", 1234)) < options.index(
        ("grpc.max_receive_message_length", 99)
    )


def test_call_metadata() -> None:
    assert call_metadata(None, None) == ()
    assert call_metadata("s3cret", "req-1") == (
        ("authorization", "Bearer s3cret"),
        ("x-request-id", "req-1"),
    )


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "caf\u00e9"])
def test_a_token_that_cannot_be_a_header_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        RankingClient("127.0.0.1:1", token=token)


def test_a_nonpositive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        RankingClient("127.0.0.1:1", timeout_s=0)


def test_tls_with_root_certificates_from_a_missing_file_fails_at_construction(
    tmp_path: Any,
) -> None:
    with pytest.raises(FileNotFoundError):
        RankingClient("127.0.0.1:1", root_certificates=tmp_path / "missing.pem")


# --- errors -------------------------------------------------------------------------


class FailedCall(grpc.RpcError):  # type: ignore[misc]
    """What a failed call raises: an RpcError that is also a grpc.Call."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
        (grpc.StatusCode.INTERNAL, RankingError),
    ],
)
def test_status_codes_map_to_error_classes(code: grpc.StatusCode, kind: type[RankingError]) -> None:
    error = error_from_rpc(FailedCall(code, "what went wrong", (("x-request-id", "req-7"),)))
    assert type(error) is kind
    assert error.code == code
    assert error.details == "what went wrong"
    assert error.request_id == "req-7"
    assert str(error) == f"{code.name}: what went wrong (request id req-7)"


def test_errors_survive_pickling() -> None:
    error = error_from_rpc(
        FailedCall(grpc.StatusCode.NOT_FOUND, "no item", (("x-request-id", "r"),))
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is NotFoundError
    assert (copy.code, copy.details, copy.request_id, str(copy)) == (
        error.code,
        error.details,
        error.request_id,
        str(error),
    )


def test_an_error_without_trailers_has_no_request_id() -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.UNAVAILABLE, "failed to connect"))
    assert isinstance(error, UnavailableError)
    assert error.request_id is None
    assert str(error) == "UNAVAILABLE: failed to connect"


def test_a_bare_rpc_error_is_unknown() -> None:
    error = error_from_rpc(grpc.RpcError("odd"))
    assert type(error) is RankingError
    assert error.code == grpc.StatusCode.UNKNOWN
    assert error.details == "odd"


# --- the CLI's table ----------------------------------------------------------------


def _response(**fields: Any) -> ranking_pb2.RecommendResponse:
    items = [
        ranking_pb2.ScoredItem(
            item_id="50",
            score=0.91234,
            title="Star Wars (1977)",
            categories=["Action", "Sci-Fi"],
            explanation=ranking_pb2.Explanation(
                closest_history_item_id="181",
                closest_history_title="Return of the Jedi (1983)",
                history_similarity=0.876,
                relevance=0.95,
                diversity_penalty=0.04,
            ),
        ),
        ranking_pb2.ScoredItem(
            item_id="1000",
            score=0.5,
            title="A" * 80,
            categories=[],
            explanation=ranking_pb2.Explanation(relevance=0.5),
        ),
    ]
    return ranking_pb2.RecommendResponse(
        items=items, model_version="v3", request_id="req-1", **fields
    )


def test_table_has_a_header_and_aligned_columns() -> None:
    lines = cli.format_response(_response()).splitlines()
    assert lines[0] == "model v3, 2 items, request req-1"
    header, first, second = lines[1:]
    assert header.split() == ["rank", "item", "score", "title", "categories"]
    # Every column starts at the same offset on every line.
    for column in ("item", "title", "categories"):
        start = header.index(column)
        assert first[start - 2 : start] == "  "
        assert first[start] != " "
    assert first.split()[:2] == ["1", "50"]
    assert "0.9123" in first
    assert first.rstrip().endswith("Action, Sci-Fi")
    assert header.index("score") + len("score") == first.index("0.9123") + len("0.9123")
    # A long title is clipped; the row keeps its shape.
    assert "A" * 57 + "..." in second
    assert "A" * 58 not in second
    assert "why" not in header


def test_table_with_explanations() -> None:
    lines = cli.format_response(_response(), explain=True).splitlines()
    assert lines[1].split()[-1] == "why"
    assert lines[2].endswith(
        "like Return of the Jedi (1983) (0.88); relevance 0.950; diversity -0.040"
    )
    assert lines[3].endswith("relevance 0.500")


def test_fallback_reason_is_shown() -> None:
    text = cli.format_response(
        _response(fallback=True, fallback_reason="unknown user: most popular items")
    )
    assert text.splitlines()[1] == "fallback: unknown user: most popular items"


def test_an_empty_answer_is_a_header_alone() -> None:
    response = ranking_pb2.RecommendResponse(model_version="v3")
    assert cli.format_response(response) == "model v3, 0 items"


# --- the CLI's arguments (nothing is sent) ------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["session", "--event", "50"],
        ["session", "--event", ":view"],
        ["recommend", "--user", "u", "--range", "price:x:2"],
        ["recommend", "--user", "u", "--range", "price:1"],
        ["popular", "--window", "month"],
        ["recommend"],
    ],
)
def test_malformed_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == cli.EXIT_USAGE
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--year-min", "1990", "--range", "year:1:2"], "--year-min/--year-max or --range"),
        (["--range", "year:1:2", "--range", "year:3:4"], "--range year is given twice"),
        (["--token", "two words"], "token"),
        (["--ca-cert", "/nonexistent/ca.pem"], "cannot read /nonexistent/ca.pem"),
    ],
)
def test_conflicting_options_fail_before_any_call(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The port is never opened: these fail while the request is being built.
    code = cli.main(["recommend", "--user", "u", "--target", "127.0.0.1:1", *argv])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1


def test_session_event_splits_at_the_last_colon() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["session", "--event", "urn:item:7:click", "--event", "8:view"])
    assert args.events == [("urn:item:7", "click"), ("8", "view")]


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="certificate_chain and private_key"):
        RankingClient("127.0.0.1:1", certificate_chain=b"-----BEGIN CERTIFICATE-----")
