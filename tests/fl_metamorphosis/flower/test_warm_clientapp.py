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
import json, os, random, socket, subprocess, sys, time
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


import flwr.supernode.cli.flwr_clientapp  # noqa: E402

sys.modules["flwr.supernode.cli.flwr_clientapp"].flwr_clientapp = report  # the package's name is the function
ours, theirs = socket.socketpair()
zygote = os.fork()
if zygote == 0:
    ours.close()
    warm._zygote(theirs)
theirs.close()
forker = warm._ForkingSubprocess(ours)
out = Path(sys.argv[1])
for i in range(3):
    assert forker.Popen([warm.CLIENTAPP, str(out / f"{i}.json")]) is None  # forked by the zygote
deadline = time.monotonic() + 60
while len(list(out.glob("*.json"))) < 3 and time.monotonic() < deadline:
    time.sleep(0.1)
ours.close()  # the SuperExec ends: so does the zygote
for _ in range(200):
    if os.waitpid(zygote, os.WNOHANG)[0]:
        break
    time.sleep(0.05)
else:
    raise SystemExit("the zygote outlived its SuperExec")
cold = forker.Popen([warm.CLIENTAPP, "--help"], stdout=subprocess.DEVNULL)  # the zygote is gone: Flower's way
print(json.dumps({"zygote": zygote, "cold_exit": cold.wait(120)}))
"""


def test_forked_clientapps_draw_as_new_processes_and_the_zygote_ends_with_its_superexec(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # flwr-clientapp
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ended = json.loads(res.stdout.strip().splitlines()[-1])
    assert ended["cold_exit"] == 0  # `flwr-clientapp --help`, started as a new process
    children = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(3)]
    assert len({c["pid"] for c in children} | {ended["zygote"]}) == 4
    assert all(c["comm"] == "flwr-clientapp" for c in children)
    # no two messages share a library's global generator (Flower's SecAgg+ quantisation draws from numpy's)
    for name in ("numpy", "random", "torch"):
        assert len({tuple(c[name]) for c in children}) == 3, name
