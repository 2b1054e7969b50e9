"""A simulation on a Ray cluster that was already running: a head started on loopback, stopped by PID."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clients.policy import SIMULATION_ENV
from fl_metamorphosis.config import ConfigError, build_config
from fl_metamorphosis.metrics import read_jsonl
from simulations.loopback import free_port, wait_for
from simulations.simulate import check_ray_address, simulate


def test_a_bad_or_dead_ray_address_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="give HOST:PORT"):
        check_ray_address("headnode")
    with pytest.raises(ConfigError, match=r"nothing answers there .* `ray start --head --port="):
        check_ray_address(f"127.0.0.1:{free_port()}")


def _port_open(port: int) -> bool:
    try:
        check_ray_address(f"127.0.0.1:{port}", timeout_s=1.0)
        return True
    except ConfigError:
        return False


@pytest.mark.slow(seconds=40)
def test_a_simulation_runs_on_a_running_ray_head(tmp_path, tiny_overrides, monkeypatch):
    ray_tmp = Path(tempfile.mkdtemp(prefix="mm-rt-"))  # short: Ray's AF_UNIX socket paths
    port = free_port()
    # the operator declares the cluster's workers simulated devices (docs/ray-cluster.md)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", SIMULATION_ENV: "1"}
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=200000000",
           "--disable-usage-stats"]  # fmt: skip
    with open(tmp_path / "ray-head.log", "w") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _port_open(port), "the Ray head", 120)
        monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))  # the driver finds the head's session there
        overrides = [*tiny_overrides, 'methods=["metamorphosis"]', "federated.rounds=1", "audit.enabled=false"]
        out = simulate(
            build_config(None, overrides), tmp_path / "run", echo=lambda _l: None, ray_address=f"127.0.0.1:{port}"
        )
        (row,) = read_jsonl(out / "metrics.jsonl")
        assert row["answered"] == 3 and row["aggregated"]
        sessions = list((ray_tmp / "ray").glob("session_2*"))
        assert len(sessions) == 1  # the head's own: the run started no Ray instance of its own
        assert list(sessions[0].glob("logs/python-core-driver-*"))  # Flower's simulation joined it as a driver
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the head's processes on SIGTERM
        try:
            head.wait(60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # anything of the head's session that is left
            except ProcessLookupError:
                pass
            shutil.rmtree(ray_tmp, ignore_errors=True)
