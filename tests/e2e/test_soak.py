"""A 60-second soak: events and queries together on the whole stack (``bench/soak.py``
runs the same code for 10 minutes and records the memory slopes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recsys.devstack.soak import run_soak
from recsys.devstack.stack import LocalStack
from tests.e2e.test_stack import catalogue
from tests.support.stack import serving_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with serving_stack(tmp_path_factory.mktemp("soak")) as running:
        yield running


def test_sixty_seconds_of_events_and_queries_without_an_error(stack: LocalStack) -> None:
    users = [f"user-{u}" for u in range(24)] + [f"soak-user-{u}" for u in range(50)]
    items = [item.item_id for item in catalogue()]
    processed_before = stack.metric_total("feature", "recsys_feature_events_total")
    result = run_soak(stack, users, items, seconds=60, events_per_s=50)
    assert result.errors == 0, result.error_codes
    assert result.calls > 100 and result.events_published > 1000
    assert len(result.p99_ms_by_window) >= 5
    assert not stack.supervisor.failed()
    assert set(result.rss_slope_mb_per_min) >= {"feature", "inference", "ranking", "trainer"}
    # every published event reached the feature worker (processed or duplicate)
    stack.wait_for(
        lambda: (
            stack.metric_total("feature", "recsys_feature_events_total") - processed_before
            >= result.events_published
        ),
        60,
        "the soak's events processed",
    )
