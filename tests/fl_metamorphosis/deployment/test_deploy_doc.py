"""docs/deploy.md's loopback recipe, run as a user would paste it: the doc cannot drift from the commands.

The recipe's first line names its ports; the test swaps in free ones (nothing else changes), runs the block
with bash from the repository root, and checks the run folder. Whatever the recipe left running is
stopped by its Flower home, also when the test fails."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from fl_metamorphosis.deployment.flower_processes import processes_of, stop_processes
from simulations.loopback import free_port

pytestmark = pytest.mark.slow

PORTS_LINE = "PORT=8000 CONTROL_PORT=9093 RUNTIME_PORT=9094"


def recipe() -> str:
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"<!-- recipe: loopback -->\n```bash\n(.*?)```\n<!-- /recipe -->", text, re.S)
    assert block, "docs/deploy.md lost its loopback recipe block"
    assert block.group(1).startswith(PORTS_LINE), "the recipe's first line must name its ports"
    return block.group(1)


@pytest.mark.slow(seconds=50)
def test_the_loopback_recipe_of_docs_deploy_md_runs_as_written(tmp_path):
    base = free_port()  # the device's runtime port and the next one must be free too
    ports = f"PORT={free_port()} CONTROL_PORT={free_port()} RUNTIME_PORT={base}"
    script = recipe().replace(PORTS_LINE, ports, 1)
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    finally:
        for home in tmp_path.glob("*/*/flwr-home"):
            stop_processes(home)
    said = res.stdout + res.stderr
    assert res.returncode == 0, said[-3000:]
    (run,) = tmp_path.glob("*/run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["command"] == "deploy" and summary["history"][-1]["answered"] == 2
    assert (run / "report.md").read_text().startswith("# deploy run")
    assert "registered board-0" in said and "registered board-1" in said
    assert all(not processes_of(home) for home in tmp_path.glob("*/*/flwr-home"))
