"""The warm ClientApp's zygote: each forked ClientApp is its own process with its own randomness, named as
Flower's, and the zygote ends with its SuperExec; once it is gone, ClientApps start cold.

The forks run in a child interpreter (``SCRIPT``), never in the test worker: there Flower's ``flwr-clientapp``
main is replaced by one that reports what a message's process would draw from the libraries' generators."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, random, signal, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch

import fl_metamorphosis.flower.warm_clientapp as warm


def report():  # in place of Flower's main: what this message's process holds
    Path(sys.argv[1]).write_text(json.dumps({
        "pid": os.getpid(), "comm": Path("/proc/self/comm").read_text().strip(),
        "numpy": np.random.rand(4).tolist(), "random": [random.random() for _ in range(4)],
        "torch": torch.rand(4).tolist(),
    }))
    if len(sys.argv) > 2:  # a message still being handled
        time.sleep(float(sys.argv[2]))


import flwr.supernode.cli.flwr_clientapp  # noqa: E402

sys.modules["flwr.supernode.cli.flwr_clientapp"].flwr_clientapp = report  # the package's name is the function


def superexec():
    ours, theirs = socket.socketpair()
    zygote = os.fork()
    if zygote == 0:
        ours.close()
        warm._zygote(theirs)
    theirs.close()
    return warm._ForkingSubprocess(ours), ours, zygote


def ended(pid):
    for _ in range(400):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.05)
    return False


def wait_for(path):
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


out = Path(sys.argv[1])
forker, ours, zygote = superexec()
for i in range(3):
    assert forker.Popen([warm.CLIENTAPP, str(out / f"{i}.json")]) is None  # forked by the zygote
assert forker.Popen([warm.CLIENTAPP, str(out / "busy.json"), "60"]) is None
for name in ("0", "1", "2", "busy"):
    wait_for(out / f"{name}.json")
os.kill(zygote, signal.SIGKILL)  # the zygote dies while a ClientApp it forked is still at work
assert ended(zygote)
cold = forker.Popen([warm.CLIENTAPP, "--help"], stdout=subprocess.DEVNULL)  # so the next starts as Flower's
os.kill(json.loads((out / "busy.json").read_text())["pid"], signal.SIGKILL)
forker, ours, second = superexec()
ours.close()  # the SuperExec ends: so does its zygote
cold_exit = None if cold is None else cold.wait(120)
print(json.dumps({"zygote": zygote, "cold_exit": cold_exit, "second_ended": ended(second)}))
"""


def test_forked_clientapps_draw_afresh_a_lost_zygote_means_cold_starts_and_it_ends_with_its_superexec(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # flwr-clientapp
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ended = json.loads(res.stdout.strip().splitlines()[-1])
    assert ended["cold_exit"] == 0  # `flwr-clientapp --help`, started as a new process once the zygote was gone
    assert ended["second_ended"]  # a zygote ends with its SuperExec
    children = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(3)]
    assert len({c["pid"] for c in children} | {ended["zygote"]}) == 4
    assert all(c["comm"] == "flwr-clientapp" for c in children)
    # no two messages share a library's global generator (Flower's SecAgg+ quantisation draws from numpy's)
    for name in ("numpy", "random", "torch"):
        assert len({tuple(c[name]) for c in children}) == 3, name


def test_a_warm_device_starts_this_superexec_and_a_cold_one_flowers(tmp_path):
    from fl_metamorphosis.deployment.launch import start_device

    which = [sys.executable, "-c", "import shutil; print(open(shutil.which('flower-superexec')).read())"]
    for warm in (True, False):
        state = tmp_path / str(warm)
        assert start_device(which, state, warm=warm).wait(60) == 0
        superexec = (state / "supernode.log").read_text()
        assert ("-m fl_metamorphosis.flower.warm_clientapp" in superexec) is warm
        assert ("from flwr.supercore.cli import flower_superexec" in superexec) is not warm
