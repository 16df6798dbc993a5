"""A whole stack with the small genre catalogue loaded and model v1 serving (e2e tests)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc

from recsys.devstack.demo import personalised_ready
from recsys.devstack.stack import LocalStack, StackConfig
from recsys.devstack.supervisor import Supervisor
from recsys.publish import publish_events


@contextmanager
def serving_stack(work: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[LocalStack]:
    """Start the stack in ``work``, publish the e2e catalogue and history, wait for v1.

    The services' output is written to ``work/stack.log`` when the stack stops.
    """
    # imported here: the catalogue lives with the e2e tests that define it
    from tests.e2e.test_stack import catalogue, history

    output = io.StringIO()
    config = StackConfig(
        workdir=work,
        trainer_min_interactions=100,
        trainer_quiet_seconds=1.0,
        extra_env=dict(extra_env or {}),
    )
    with LocalStack(config, Supervisor(out=output, colour=False)) as running:
        try:
            publish_events(running.kafka, catalogue(), history(), progress=False)
            with grpc.insecure_channel(running.ranking_address) as channel:
                running.wait_for(
                    lambda: personalised_ready(channel, ["user-0", "user-1"]), 300, "v1 serving"
                )
            yield running
        finally:
            (work / "stack.log").write_text(output.getvalue())
