"""``make run``: the whole recommender on this machine, then a demo over gRPC. Ctrl-C stops."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

from recsys.data import movielens
from recsys.devstack.demo import run_demo
from recsys.devstack.stack import LocalStack, StackConfig


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Explicit, so Ctrl-C works even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    print("Fetching MovieLens-100K (cached after the first run)...", flush=True)
    data = movielens.load()
    stack = LocalStack(
        StackConfig(
            workdir=Path(".data/run"),
            broker_port=9092,
            ranking_port=50051,
            # The demo trains for at most this long (the best epoch so far is kept);
            # `make evaluate` trains to convergence.
            extra_env={"RECSYS_TRAINER_MODEL__CONTRASTIVE__TIME_BUDGET_S": "150"},
        )
    )
    say = stack.supervisor.say
    try:
        stack.start()
        run_demo(stack, data)
        say(
            "stack",
            'serving; try: grpcurl -plaintext -d \'{"user_id": "42", "k": 5}\' '
            f"{stack.ranking_address} recsys.v1.RankingService/Recommend",
        )
        say("stack", "press Ctrl-C to stop")
        while not stack.supervisor.failed():
            time.sleep(0.5)
        dead = stack.supervisor.failed()[0]
        say("stack", f"{dead.name} exited unexpectedly; stopping everything")
        return 1
    except KeyboardInterrupt:
        say("stack", "stopping...")
        return 0
    except Exception as exc:
        say("stack", f"failed: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the orderly stop short and leave orphans.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        say("stack", "stopped")


if __name__ == "__main__":
    sys.exit(main())
