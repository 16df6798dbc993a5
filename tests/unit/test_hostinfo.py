"""The machine line benchmarks write beside their timings."""

from __future__ import annotations

import os
import time
from pathlib import Path

from recsys.hostinfo import cpu_model, machine_summary, process_cpu_seconds


def test_cpu_model_reads_the_first_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n",
        encoding="utf-8",
    )
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor"


def test_cpu_model_without_cpuinfo_still_names_something(tmp_path: Path) -> None:
    assert cpu_model(tmp_path / "missing") != ""


def test_machine_summary_names_the_core_count() -> None:
    assert machine_summary().endswith(" cores")


def test_process_cpu_seconds_counts_this_process_working() -> None:
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert process_cpu_seconds(os.getpid()) > before
