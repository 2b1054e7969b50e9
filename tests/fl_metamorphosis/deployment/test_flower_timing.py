"""Flower's heartbeat and upload window, set per process: the commands carry them, bad values are refused,
and the entry point sets every copy it names before it runs Flower's own command."""

import subprocess
import sys

import pytest

from fl_metamorphosis.config import ConfigError
from fl_metamorphosis.data.device_folder import META
from fl_metamorphosis.deployment import launch
from fl_metamorphosis.flower import process_timing


def test_the_commands_carry_the_timing_only_when_asked(tmp_path):
    grace = ["--shutdown-grace-s", str(launch.SHUTDOWN_GRACE_S), "--"]  # a SuperLink always stops within it
    plain = launch.server_command(None, 9000, tmp_path)
    assert plain[:7] == [sys.executable, "-m", launch.TIMING, "superlink", *grace]
    timed = launch.server_command(None, 9000, tmp_path, upload_ttl_s=30)
    assert timed[:9] == [sys.executable, "-m", launch.TIMING, "superlink", "--upload-ttl-s", "30", *grace]
    assert timed[9:] == plain[7:]
    with pytest.raises(ConfigError, match="--upload-ttl-s 0"):
        launch.server_command(None, 9000, tmp_path, upload_ttl_s=0)
    with pytest.raises(ConfigError, match="--heartbeat-s 5: Flower's SuperLink takes 10 to 1800 s"):
        launch.device_command("h:1", None, None, tmp_path / "data", tmp_path / "s", 1, "d", heartbeat_s=5)
    for poll_s in (0.01, 61):
        with pytest.raises(ConfigError, match=f"--poll-s {poll_s}: give 0.1 to 60 s"):
            launch.device_command("h:1", None, None, tmp_path / "data", tmp_path / "s", 1, "d", poll_s=poll_s)


def test_a_device_polls_at_the_interval_asked_and_every_other_wait_is_flowers(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / META).write_text('{"partition_id": 0}')
    cmd = launch.device_command("h:1", None, None, tmp_path / "data", tmp_path / "s", 1, "d", poll_s=0.5)
    assert cmd[:7] == [sys.executable, "-m", launch.TIMING, "supernode", "--poll-s", "0.5", "--"]
    check = (
        "import importlib, time\n"
        "from fl_metamorphosis.flower import process_timing as t\n"
        "t.set_idle_poll(0.2)\n"
        "loop = importlib.import_module(t.IDLE_LOOP)\n"
        "slept = []\n"
        "time.sleep = slept.append\n"
        "loop.time.sleep(3); loop.time.sleep(0.5)\n"
        "print(slept, loop.time.monotonic is time.monotonic)\n"
    )
    assert _python(check) == "[0.2, 0.5] True"  # the idle wait is 0.2 s; the reply wait stays 0.5 s
    assert "flower-supernode" in _timing("supernode", "--poll-s", "0.2").stdout
    refused = _timing("superlink", "--poll-s", "0.2")  # a SuperNode's option, given to the SuperLink
    assert refused.returncode == 2 and "superlink does not take --poll-s" in refused.stderr


def test_the_idle_poll_grows_to_flowers_while_no_message_comes_and_is_fast_again_after_one():
    now, slept = [0.0], []

    def sleep(seconds: float) -> None:  # a virtual clock: each wait moves it
        slept.append(seconds)
        now[0] += seconds

    loop_time = process_timing._IdlePollTime(0.5, clock=lambda: now[0], sleep=sleep)
    for _ in range(40):  # no message: from 0.5 s, a tenth of the idle time, up to Flower's 3 s
        loop_time.sleep(3)
    assert slept[:10] == [0.5] * 10 and slept == sorted(slept) and slept[-1] == 3.0
    assert 0.5 < slept[12] < 3.0
    slept.clear()
    loop_time.sleep(0.5)  # the loop waits for a ClientApp's reply: a message came
    loop_time.sleep(3)
    assert slept == [0.5, 0.5]
    for _ in range(40):
        loop_time.sleep(3)
    now[0] += 2.0  # the loop was away longer than a pull takes: it handled a message without a reply wait
    slept.clear()
    loop_time.sleep(3)
    assert slept == [0.5]
    assert process_timing.idle_poll_s(0.0, 10.0) == process_timing.idle_poll_s(600.0, 10.0) == 10.0  # never below


def _python(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (Flower's modules as a new process imports them)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _timing(component: str, *options: str) -> subprocess.CompletedProcess:
    """The entry point with ``options``, running Flower's command with ``--help``."""
    return subprocess.run([sys.executable, "-m", launch.TIMING, component, *options, "--", "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("component", "option", "copies"),
    [("supernode", "--heartbeat-s", process_timing.HEARTBEAT_COPIES),
     ("superlink", "--upload-ttl-s", process_timing.UPLOAD_TTL_COPIES)],
)  # fmt: skip
def test_the_entry_point_sets_every_copy_then_runs_flowers_command(component, option, copies):
    names = ", ".join(f"importlib.import_module({m!r}).{n}" for m, n in copies)
    check = (
        "import importlib, sys\n"
        "from fl_metamorphosis.flower import process_timing as t\n"
        f"t.set_copies(t.{'HEARTBEAT_COPIES' if component == 'supernode' else 'UPLOAD_TTL_COPIES'}, 12.0)\n"
        f"print([{names}])\n"
    )
    assert _python(check) == str([12.0] * len(copies))
    helped = _timing(component, option, "12")
    assert helped.returncode == 0 and f"flower-{component}" in helped.stdout


def test_the_superlinks_shutdown_waits_at_most_its_grace_for_open_requests():
    check = (
        "import uvicorn\n"
        "from fl_metamorphosis.flower import process_timing as t\n"
        "seen = {}\n"
        "uvicorn.run = lambda *a, **kw: seen.update(kw)\n"
        "t.bound_shutdown(2.5)\n"
        "import importlib\n"
        "importlib.import_module('flwr.superlink.cli.flower_superlink').uvicorn.run(app=None, workers=1)\n"
        "print(seen)\n"
    )
    assert _python(check) == str({"app": None, "workers": 1, "timeout_graceful_shutdown": 2.5})
