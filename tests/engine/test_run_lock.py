"""One writer per run: a live owner of a checkpoint folder refuses a second process at once, naming it; the
lock of a process that was killed is taken over."""

import logging
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from detection.engine.checkpoint import RunLock, RunLocked

HOLD = ("import sys, time; from pathlib import Path; from detection.engine.checkpoint import RunLock; "
        "lock = RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")


@pytest.fixture
def holder(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_live_owner_is_named_and_refuses_a_second_process(tmp_path, holder):
    with pytest.raises(RunLocked, match=rf"{tmp_path} is in use by another training process \(pid {holder.pid} on"):
        RunLock(tmp_path).acquire()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert f"taking over the lock of pid {holder.pid}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):  # released cleanly: nothing to take over
        assert "taking over" not in caplog.text


def test_a_forked_child_does_not_hold_the_lock_of_its_parent(tmp_path):
    """Loader workers are forked from the training process; a SIGKILLed trainer's lock must die with it."""
    code = ("import os, signal, sys, time; from pathlib import Path; from detection.engine.checkpoint import RunLock; "
            "lock = RunLock(Path(sys.argv[1])).acquire(); child = os.fork()\n"
            "if child == 0: time.sleep(30); os._exit(0)\n"
            "print(child, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(process.stdout.readline())
    process.wait()
    try:
        with RunLock(tmp_path):  # the parent is dead, its forked child still runs
            pass
    finally:
        os.kill(child, signal.SIGKILL)
