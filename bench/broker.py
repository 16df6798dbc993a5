"""The local broker alone: does its CPU per second grow with the records it holds?

``make run``, the tests and ``bench/streaming.py`` use Tansu, an in-memory
Kafka-protocol broker (production uses Apache Kafka). This script starts a fresh Tansu,
produces ``--rate`` messages/s of ``--size`` bytes to one topic, lets ``--consumers``
groups read it as it arrives, and samples the broker's CPU every ``--every`` seconds.
Four cases: no consumer, one consumer at librdkafka's default producer linger (5 ms),
one with ten times the linger (fewer, larger record batches), and one paced consumer at
5 ms (``recsys.kafka.paced_fetch``: while records flow, a fetch at most every 500 ms, as
the trainer and trending read). Writes ``bench/results/broker.json``.

It explains the long-run figure of ``bench/streaming.py``: there, the broker's CPU grew
through a 120 s run at 3,000 events/s until the two cores could not keep up, while each
service's CPU per event stayed flat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from recsys.devstack.broker import LocalBroker
from recsys.hostinfo import machine_summary, process_cpu_seconds
from recsys.kafka import make_consumer, make_producer, paced_fetch, usable
from recsys.settings import KafkaSettings

RESULTS = Path(__file__).parent / "results" / "broker.json"
TOPIC = "broker-bench"


def _consume(
    kafka: KafkaSettings,
    group: str,
    counts: list[int],
    slot: int,
    stop: threading.Event,
    fetch_interval_ms: int,
) -> None:
    consumer = make_consumer(kafka, group, **paced_fetch(fetch_interval_ms))
    consumer.subscribe([TOPIC])
    try:
        while not stop.is_set():
            counts[slot] += len(usable(consumer.consume(500, 0.2)))
    finally:
        consumer.close()


def run_case(
    rate: int,
    size: int,
    seconds: float,
    every: float,
    consumers: int,
    linger_ms: int,
    fetch_interval_ms: int = 0,
) -> dict[str, Any]:
    """One fresh broker: broker CPU cores per sample while the topic fills."""
    with LocalBroker() as broker:
        assert broker.pid is not None
        # the clients and the fetch wait the local stack's services use
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=50,
        )
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        for future in admin.create_topics([NewTopic(TOPIC, 4, 1)]).values():
            future.result()
        producer = make_producer(kafka, **{"linger.ms": linger_ms})
        counts = [0] * consumers
        stop = threading.Event()
        readers = [
            threading.Thread(
                target=_consume, args=(kafka, f"g{i}", counts, i, stop, fetch_interval_ms)
            )
            for i in range(consumers)
        ]
        for reader in readers:
            reader.start()
        payload = b"x" * size
        samples: list[dict[str, float]] = []
        started = last = time.monotonic()
        last_cpu = process_cpu_seconds(broker.pid)
        sent = 0
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                producer.produce(TOPIC, payload, key=str(sent % 1000).encode())
                sent += 1
            producer.poll(0)
            time.sleep(0.002)
            if time.monotonic() - last >= every:
                now, cpu = time.monotonic(), process_cpu_seconds(broker.pid)
                samples.append(
                    {
                        "second": round(now - started),
                        "messages_held": sent,
                        "broker_cores": round((cpu - last_cpu) / (now - last), 2),
                    }
                )
                last, last_cpu = now, cpu
        producer.flush(30)
        stop.set()
        for reader in readers:
            reader.join()
    cores = [s["broker_cores"] for s in samples]
    return {
        "rate": rate,
        "message_bytes": size,
        "consumers": consumers,
        "linger_ms": linger_ms,
        "fetch_interval_ms": fetch_interval_ms,
        "broker_cores_first": cores[0],
        "broker_cores_last": cores[-1],
        "broker_cores_median": statistics.median(cores),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1500, help="messages/s")
    parser.add_argument("--size", type=int, default=700, help="bytes per message")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases = [(0, 5, 0), (1, 5, 0), (1, 50, 0), (1, 5, 500)]  # consumers, linger, pace (ms)
    results = []
    for consumers, linger, interval in cases:
        case = run_case(args.rate, args.size, args.seconds, args.every, consumers, linger, interval)
        paced = f", paced at {interval} ms" if interval else ""
        print(
            f"{consumers} consumer(s), linger {linger} ms{paced}: broker "
            f"{case['broker_cores_first']} cores after {args.every:.0f} s, "
            f"{case['broker_cores_last']} after {args.seconds:.0f} s"
        )
        results.append(case)
    result = {"machine": machine_summary(), "broker": "Tansu 0.6.0 (memory)", "cases": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
