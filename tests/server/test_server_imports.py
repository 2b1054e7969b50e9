"""The ServerApp does not import Opacus: it never trains with DP-SGD, and every simulation, warm runner and
deployed run starts a ServerApp process that would pay for it (fl_metamorphosis/training/trainer.py)."""

import subprocess
import sys

HEAVY = ("opacus", "fl_metamorphosis.privacy.dp_sgd")
PROBE = f"import sys, server.server_app; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def test_importing_the_server_app_does_not_import_opacus():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", (res.stdout, res.stderr[-2000:])
