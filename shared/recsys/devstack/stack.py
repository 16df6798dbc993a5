"""The whole system on one machine: Tansu, then every service as its own process.

Used by ``make run`` and by the end-to-end tests, so both exercise the same wiring.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from recsys.devstack.broker import LocalBroker
from recsys.devstack.ports import free_port, port_open
from recsys.devstack.supervisor import Supervisor
from recsys.kafka import wait_for_broker
from recsys.settings import KafkaSettings
from recsys.topics import create_topics

SERVICES = ("feature", "inference", "ranking", "trainer")
# Counters that say how far events got, reported when a wait times out.
PIPELINE_METRIC_PREFIXES = (
    "recsys_feature_",
    "recsys_inference_vectors",
    "recsys_indexer_",
    "recsys_dead_letters",
    "recsys_trainer_runs",
)


@dataclass
class StackConfig:
    workdir: Path
    broker_port: int = 0  # 0 = any free port
    ranking_port: int = 0
    partitions: int = 2
    topic_prefix: str = ""
    trainer_min_interactions: int = 1_000
    trainer_quiet_seconds: float = 5.0
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)


def _port(wanted: int) -> int:
    return wanted if wanted and not port_open(wanted) else free_port()


class LocalStack:
    def __init__(self, config: StackConfig, supervisor: Supervisor | None = None) -> None:
        self.config = config
        self.supervisor = supervisor or Supervisor()
        self.broker = LocalBroker(_port(config.broker_port), config.workdir / "broker.log")
        self.ranking_port = _port(config.ranking_port)
        self.inference_port = free_port()
        self.http_ports = {name: free_port() for name in SERVICES}

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.broker.bootstrap_servers,
            topic_prefix=self.config.topic_prefix,
            partitions=self.config.partitions,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
        )

    @property
    def ranking_address(self) -> str:
        return f"127.0.0.1:{self.ranking_port}"

    def service_env(self, name: str) -> dict[str, str]:
        work = self.config.workdir
        kafka = self.kafka
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "RECSYS_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RECSYS_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "RECSYS_KAFKA_PARTITIONS": str(kafka.partitions),
            # Tansu makes group joins wait half the session timeout (INFRA notes).
            "RECSYS_KAFKA_SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "RECSYS_KAFKA_HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            # Tansu holds a fetch for much of its wait even while records arrive, so here the
            # wait is the batching interval of every consumer: 10 ms kept hops short but,
            # in batches that small, cost twice the CPU under load (1,570 events/s, not
            # 3,550, in bench/streaming.py); 50 ms keeps a hop near 50 ms.
            "RECSYS_KAFKA_FETCH_MAX_WAIT_MS": "50",
            # Fewer, larger record batches, for the reason user-sequences' are larger
            # (services/feature/app.py): at 3,000 events/s for 120 s the feature backlog
            # grew 9 events/s with a 25 ms linger and 2.6 with 50 ms.
            "RECSYS_KAFKA_PRODUCER_LINGER_MS": "50",
            "RECSYS_ARTIFACTS_ROOT": str(work / "artifacts"),
            "RECSYS_STORE_PATH": str(work / "vectors"),
            "RECSYS_FEATURE_DATA_DIR": str(work / "feature"),
            # Outside the per-run state, so a second `make run` skips re-encoding titles.
            "RECSYS_INFERENCE_TEXT_CACHE_DIR": str(work / "text-cache" / "inference"),
            "RECSYS_TRAINER_TEXT_CACHE_DIR": str(work / "text-cache" / "trainer"),
            "RECSYS_RANKING_PORT": str(self.ranking_port),
            "RECSYS_INFERENCE_GRPC_PORT": str(self.inference_port),
            "RECSYS_RANKING_INFERENCE_TARGET": f"127.0.0.1:{self.inference_port}",
            "RECSYS_TRAINER_MIN_INTERACTIONS": str(self.config.trainer_min_interactions),
            "RECSYS_TRAINER_QUIET_SECONDS": str(self.config.trainer_quiet_seconds),
            "RECSYS_OBS_LOG_LEVEL": self.config.log_level,
            "RECSYS_OBS_HTTP_PORT": str(self.http_ports[name]),
            # Two cores are shared by every process here.
            "OMP_NUM_THREADS": "1",
            # As in the image: without it a worker's threads each grow a glibc heap arena
            # and resident memory creeps up (the feature worker alone at 100 events/s:
            # 0.41 MB/min without it, 0.0 with it).
            "MALLOC_ARENA_MAX": "2",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.update(self.config.extra_env)
        return env

    def start(self) -> LocalStack:
        work = self.config.workdir
        # The broker keeps nothing across restarts, so neither may the state built from it.
        for stale in ("vectors", "feature", "artifacts"):
            shutil.rmtree(work / stale, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.supervisor.say(
            "stack", f"Kafka-protocol broker (Tansu) on {self.broker.bootstrap_servers}"
        )
        wait_for_broker(self.kafka)
        create_topics(self.kafka)
        for name in SERVICES:
            self.supervisor.start(
                name, [sys.executable, "-m", f"services.{name}"], self.service_env(name)
            )
        self.wait_for(lambda: port_open(self.ranking_port), 120, "the ranking gRPC port")
        self.supervisor.say("stack", f"ranking gRPC on {self.ranking_address}")
        return self

    def metric_samples(self, service: str, timeout_s: float = 2.0) -> list[Sample]:
        """Every sample on a service's /metrics endpoint (none if it does not answer)."""
        url = f"http://127.0.0.1:{self.http_ports[service]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            return []
        return [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def metric_total(self, service: str, name: str) -> float:
        """Sum of a counter's samples on a service's /metrics endpoint (0 if unreachable)."""
        return sum(sample.value for sample in self.metric_samples(service) if sample.name == name)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` until true; fail early, with its last logs, if a service died."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            dead = self.supervisor.failed()
            if dead:
                tail = "\n".join(dead[0].log_lines[-30:])
                raise RuntimeError(
                    f"service {dead[0].name} exited while waiting for {what}:\n{tail}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout_s:.0f}s waiting for {what}; "
                    f"pipeline counters: {self.pipeline_counters()}"
                )
            time.sleep(0.1)

    def pipeline_counters(self) -> dict[str, dict[str, float]]:
        """Where events got to, per service: every counter and gauge named for the
        pipeline (events by outcome, partitions owned, vectors published, writes)."""
        return {
            name: {
                _sample_label(sample): sample.value
                for sample in self.metric_samples(name, timeout_s=1.0)
                if sample.name.startswith(PIPELINE_METRIC_PREFIXES)
            }
            for name in SERVICES
        }

    def stop(self) -> None:
        self.supervisor.stop()
        self.broker.stop()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _sample_label(sample: Sample) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name
