"""The local-stack supervisor: log rendering, and real child processes it starts and stops."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from recsys.devstack.supervisor import RESET, Child, Supervisor, render_log_line

DEADLINE_S = 20.0


# -- render_log_line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"ts": "2024-01-01T00:00:00Z", "level": "info", "service": "indexer",'
            ' "logger": "x", "msg": "items alias switched", "version": "v2", "items": 20}',
            "INFO    items alias switched version=v2 items=20",
        ),
        ('{"level": "warning", "msg": "slow"}', "WARNING slow"),
        ('{"level": "error", "msg": "boom", "error": "bad"}', "ERROR   boom error=bad"),
        ('{"msg": "no level", "k": 1}', "        no level k=1"),
        ('{"level": "debug", "msg": "nested", "d": {"a": 1}}', "DEBUG   nested d={'a': 1}"),
    ],
)
def test_render_json_log_line(line: str, expected: str) -> None:
    assert render_log_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "plain text from a library",
        "",
        "   ",
        "{not json",
        "INFO: Started server process [42]",
        "Traceback (most recent call last):",
    ],
)
def test_render_non_json_line_unchanged(line: str) -> None:
    assert render_log_line(line) == line


@pytest.mark.parametrize(
    "line",
    ["[1, 2, 3]", '"a string"', "42", "null", "true", '{"level": "info", "message": "no msg"}'],
)
def test_render_json_that_is_not_a_log_object_unchanged(line: str) -> None:
    assert render_log_line(line) == line


# -- Supervisor with real children ----------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.01)  # polling interval, not synchronisation


def _python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", code]


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def supervisor(out: io.StringIO) -> Iterator[Supervisor]:
    sup = Supervisor(out=out, colour=False)
    yield sup
    # Whatever a test left running is killed, so no child outlives it.
    for child in sup.children:
        if child.process is not None and child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_captures_prefixed_output_of_two_children(supervisor: Supervisor, out: io.StringIO) -> None:
    env = dict(os.environ)
    one = supervisor.start("one", _python("print('hello from one'); print('second line')"), env)
    two = supervisor.start(
        "two",
        _python(
            "import json, sys;"
            "print(json.dumps({'level': 'info', 'msg': 'started', 'port': 7}));"
            "print('to stderr', file=sys.stderr)"
        ),
        env,
    )
    _wait_for(lambda: len(one.log_lines) == 2 and len(two.log_lines) == 2, "output of both")
    _wait_for(lambda: len(_lines(out)) == 4, "four written lines")

    lines = _lines(out)
    assert "one       | hello from one" in lines
    assert "one       | second line" in lines
    assert "two       | INFO    started port=7" in lines  # JSON rendered
    assert "two       | to stderr" in lines  # stderr merged into stdout
    assert lines.index("one       | hello from one") < lines.index("one       | second line")
    assert "\033[" not in out.getvalue()  # colour off
    # The raw lines are kept for diagnostics.
    assert one.log_lines == ["hello from one", "second line"]
    assert two.log_lines[0].startswith("{")


def test_colour_on_wraps_prefix(supervisor: Supervisor, out: io.StringIO) -> None:
    coloured = Supervisor(out=out, colour=True)
    child = coloured.start("c", _python("print('x')"), dict(os.environ))
    supervisor.children.append(child)  # cleaned up by the fixture
    _wait_for(lambda: "x\n" in out.getvalue(), "coloured line")
    assert out.getvalue() == f"\033[36mc         |{RESET} x\n"


def test_keeps_only_last_lines(out: io.StringIO) -> None:
    sup = Supervisor(out=out, colour=False, keep_lines=3)
    child = sup.start("many", _python("for i in range(10): print(i)"), dict(os.environ))
    _wait_for(lambda: len(_lines(out)) == 10, "ten lines")
    assert child.log_lines == ["7", "8", "9"]
    assert child.process is not None
    child.process.wait()


def test_failed_reports_a_child_that_exited(supervisor: Supervisor) -> None:
    env = dict(os.environ)
    runner = supervisor.start("runner", _python("import time; time.sleep(60)"), env)
    crasher = supervisor.start("crasher", _python("raise SystemExit(3)"), env)
    assert crasher.process is not None
    crasher.process.wait()
    _wait_for(lambda: bool(supervisor.failed()), "failed child")
    assert supervisor.failed() == [crasher]
    assert crasher.process.returncode == 3
    assert runner.process is not None and runner.process.poll() is None

    supervisor.stop(timeout_s=5.0)
    assert runner.process.returncode == -signal.SIGTERM


def _start_stubborn(supervisor: Supervisor, name: str) -> Child:
    child = supervisor.start(
        name,
        _python(
            "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)"
        ),
        dict(os.environ),
    )
    _wait_for(lambda: "ready" in child.log_lines, f"{name} ready")
    return child


def test_stop_terminates_a_polite_child_and_kills_a_stubborn_one(
    supervisor: Supervisor, out: io.StringIO
) -> None:
    polite = supervisor.start(
        "polite", _python("import time; print('up', flush=True); time.sleep(60)"), dict(os.environ)
    )
    stubborn = _start_stubborn(supervisor, "stubborn")
    _wait_for(lambda: "up" in polite.log_lines, "polite up")

    supervisor.stop(timeout_s=1.0)

    assert supervisor.stopping
    assert polite.process is not None and stubborn.process is not None
    assert polite.process.returncode == -signal.SIGTERM
    assert stubborn.process.returncode == -signal.SIGKILL
    assert "stack     | stubborn did not stop in 1s; killing it" in _lines(out)
    assert not any("polite did not stop" in line for line in _lines(out))


def test_stop_reaches_the_whole_process_group(supervisor: Supervisor) -> None:
    # A child that starts a grandchild: both get the signal, so neither is left behind.
    child = supervisor.start(
        "group",
        [
            sys.executable,
            "-u",
            "-c",
            "import subprocess,sys;"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print(p.pid, flush=True); p.wait()",
        ],
        dict(os.environ),
    )
    _wait_for(lambda: bool(child.log_lines), "grandchild pid")
    grandchild = int(child.log_lines[0])

    supervisor.stop(timeout_s=5.0)

    assert child.process is not None and child.process.returncode is not None

    def gone() -> bool:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return True
        # A zombie waiting for init to reap it is as good as gone.
        try:
            with open(f"/proc/{grandchild}/stat", encoding="ascii") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in {"Z", "X"}

    _wait_for(gone, "grandchild exit")


def test_stop_with_nothing_running_is_a_no_op(supervisor: Supervisor) -> None:
    child = supervisor.start("quick", _python("pass"), dict(os.environ))
    assert child.process is not None
    child.process.wait()
    supervisor.stop(timeout_s=1.0)
    assert child.process.returncode == 0
