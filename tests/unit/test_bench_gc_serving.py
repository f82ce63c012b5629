"""The benchmark's pulls while collecting (bench/gcloop.py): idle and busy windows in
turn, the busy/idle ratio from their sums and per pair, and the collector loop's CPU,
its child processes' included, which stops growing while the loop is paused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bench import report
from bench.gcloop import CollectorLoop, Window, collector_share, paired_rows, window_order
from bench.loadgen import LoadResult
from bench.servers import cpu_seconds

# A run: a child process that burns 0.2 s of CPU, waited for, then the run ends.
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass\n"
RUN = [
    sys.executable,
    "-c",
    f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}], check=True)",
]


def load(requests: int, seconds: float = 2.0) -> LoadResult:
    return LoadResult(
        "wrk",
        32,
        duration_us=round(seconds * 1e6),
        requests=requests,
        bytes=requests * 100,
        connect_errors=0,
        read_errors=0,
        write_errors=0,
        status_errors=0,
        timeouts=0,
        latency_mean_us=1.0,
        latency_p50_us=1,
        latency_p99_us=1,
        latency_max_us=1,
    )


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.05)


def test_windows_alternate_so_a_drift_weighs_on_both_sides() -> None:
    assert window_order(3) == [False, True, True, False, False, True]


def test_the_ratio_comes_from_the_sums_and_each_pair_is_kept() -> None:
    windows = [
        Window(False, load(1000), 0.0),
        Window(True, load(800), 0.5),
        Window(True, load(900, seconds=3.0), 0.9),  # 300 req/s
        Window(False, load(1500, seconds=3.0), 0.0),  # 500 req/s
    ]
    idle, busy = paired_rows(windows, cpus=2)
    assert idle["value"] == pytest.approx(2500 / 5.0)
    assert busy["value"] == pytest.approx(1700 / 5.0)
    assert busy["pair_ratios"] == [0.8, 0.6]
    assert busy["median_ratio"] == pytest.approx(0.7)
    assert busy["collector_cpu_seconds"] == pytest.approx(1.4)
    assert busy["collector_cpu_share"] == pytest.approx(1.4 / 5.0 / 2)
    both = collector_share([*windows, Window(True, load(1000), 0.6)], cpus=2)
    assert both["value"] == pytest.approx(2.0 / 7.0 / 2)
    assert both["window_seconds"] == pytest.approx(7.0)
    assert [w["requests"] for w in busy["windows"]] == [800, 900]
    assert "errors" not in busy


def test_the_report_keeps_the_pairs_behind_the_ratio() -> None:
    windows = [Window(False, load(1000), 0.0, 1.5), Window(True, load(700), 0.2, 2.5)]
    idle, busy = paired_rows(windows, cpus=2)
    results = {"entrepot": {"gc_idle_manifest": idle, "gc_busy_manifest": busy}}
    report.derive(results)
    row = results["entrepot"]["gc_serving_manifest"]
    assert row["value"] == pytest.approx(0.7)
    assert row["pair_ratios"] == [0.7]
    assert row["collector_cpu_share"] == pytest.approx(0.2 / 2.0 / 2)
    assert row["loadavg"] == {"idle": [1.5], "busy": [2.5]}
    assert "windows" not in row


def test_a_tree_counts_the_children_it_has_waited_for_once_asked() -> None:
    script = (
        f"import subprocess, sys, time; subprocess.run({RUN!r}); print(flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        parent.stdout.readline()  # the child and its own child have ended
        assert cpu_seconds(parent.pid, ended=True) >= 0.2
        assert cpu_seconds(parent.pid) < 0.2
    finally:
        parent.kill()
        parent.wait()


def test_the_loop_counts_its_runs_cpu_and_stops_while_paused(tmp_path: Path) -> None:
    loop = CollectorLoop(RUN, {}, tmp_path / "err")
    try:
        assert loop.cpu_seconds() == 0.0  # nothing runs before the first resume
        loop.resume()
        wait_for(lambda: loop.finished >= 2, "two runs")
        loop.pause()
        paused = loop.cpu_seconds()
        assert paused >= 0.4  # the runs' children, waited for
        time.sleep(0.5)
        assert loop.cpu_seconds() == pytest.approx(paused, abs=0.02)
        finished = loop.finished
        time.sleep(0.3)
        assert loop.finished == finished
        loop.resume()
        wait_for(lambda: loop.finished > finished, "a run after resuming")
    finally:
        loop.close()


def test_a_failed_run_stops_the_loop_with_its_message(tmp_path: Path) -> None:
    loop = CollectorLoop(["sh", "-c", "echo no lease here >&2; exit 3"], {}, tmp_path / "err")
    loop.resume()
    with pytest.raises(RuntimeError, match=r"garbage-collect failed \(3\): no lease here"):
        wait_for(lambda: loop.cpu_seconds() < 0, "failure")
    with pytest.raises(RuntimeError, match="no lease here"):
        loop.close()
    missing = CollectorLoop([str(tmp_path / "no-such-program")], {}, tmp_path / "err")
    missing.resume()
    with pytest.raises(RuntimeError, match="could not start"):
        wait_for(lambda: missing.cpu_seconds() < 0, "failure")
    with pytest.raises(RuntimeError, match="could not start"):
        missing.close()
