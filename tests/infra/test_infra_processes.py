"""Process bookkeeping through /proc, on real child processes."""

import os
import subprocess
import sys
from pathlib import Path

from infra.processes import descendants, pid_alive, process_name, read_pidfile, stop_process


def test_a_living_process_is_alive_and_named() -> None:
    assert pid_alive(os.getpid())
    assert process_name(os.getpid()) is not None


def test_stop_process_terminates_a_child_and_its_tree_is_seen() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time;"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)",
        ],
    )
    try:
        for _ in range(100):
            tree = descendants(child.pid)
            if tree:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(tree) == 1
        assert stop_process(child.pid, grace=5.0, popen=child) is False
        assert child.returncode is not None
        assert not pid_alive(child.pid)
        stop_process(tree[0], grace=5.0)
        assert not pid_alive(tree[0])
    finally:
        child.kill()
        child.wait()


def test_a_child_ignoring_sigterm_is_killed() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time;"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    child.stdout.readline()
    assert stop_process(child.pid, grace=0.2, popen=child) is True
    assert child.returncode == -9
    child.stdout.close()


def test_read_pidfile(tmp_path: Path) -> None:
    (tmp_path / "ok.pid").write_text("123\n")
    (tmp_path / "bad.pid").write_text("x")
    assert read_pidfile(tmp_path / "ok.pid") == 123
    assert read_pidfile(tmp_path / "bad.pid") is None
    assert read_pidfile(tmp_path / "missing.pid") is None
