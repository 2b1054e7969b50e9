"""The ClientApp Flower loads is light: a deployed device starts a process per message, and SecAgg+'s key
stages must not pay for torch and Opacus (clients/client_app.py)."""

import os
import subprocess
import sys
from pathlib import Path

SETUP_STAGE = """
import sys
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app

assert "torch" not in sys.modules, "importing the ClientApp imported torch"
setup = ConfigRecord({
    Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2,
    Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 22, Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 1000.0,
})
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # what Flower's process sets
msg = Message(RecordDict({RECORD_KEY_CONFIGS: setup}), dst_node_id=7, message_type="train")
context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
reply = app(msg, context)
assert not reply.has_error(), reply.error
public_keys = reply.content.config_records[RECORD_KEY_CONFIGS]
assert len(public_keys[Key.PUBLIC_KEY_1]) > 0 and len(public_keys[Key.PUBLIC_KEY_2]) > 0
for heavy in ("torch", "opacus", "fl_metamorphosis.flower.messages", "clients.device_app"):
    assert heavy not in sys.modules, heavy + " was imported for SecAgg+'s setup stage"
print("ok")
"""


def test_secagg_setup_stage_answers_without_importing_torch_or_the_device_app():
    res = subprocess.run([sys.executable, "-c", SETUP_STAGE], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_a_message_that_reaches_a_handler_goes_to_the_device_app():
    probe = "import clients.client_app as c; print(sorted(c.app._registered_funcs))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "['evaluate.default', 'query.features', 'train.default']", res.stderr[-2000:]


HANDLERS = """
import sys

from device_messages import device_context, fed_cfg, train_message

from clients.client_app import app

cfg = fed_cfg("release_gate.enabled=true")  # the gate's probe runs in the features handler too
context = device_context(sys.argv[1], cfg)
HEAVY = ("opacus", "dp_accounting")  # training needs the first, the server's accounting the second
assert not any(m in sys.modules for m in HEAVY), "the test's own imports loaded " + str(HEAVY)
for kind in ("query.features", "evaluate", "train"):
    msg, _ = train_message(cfg)
    msg.metadata.__dict__["_message_type"] = kind
    reply = app(msg, context)
    assert not reply.has_error(), (kind, reply.error)
    print(kind, "opacus" in sys.modules, sorted(m for m in HEAVY[1:] if m in sys.modules))
"""


def test_only_a_train_message_imports_opacus_and_none_imports_dp_accounting(tmp_path):
    """A board starts a process per message: releasing features and evaluating must not pay for Opacus, and
    no message pays for dp-accounting (the release's accounting is the server's)."""
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-c", HANDLERS, str(tmp_path / "device")], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.split("\n")[:3]
    assert lines == ["query.features False []", "evaluate False []", "train True []"], res.stdout


def test_the_release_and_its_gate_import_no_scipy_stats():
    """scipy.stats was most of a feature query's own imports; the gate's binomial test and the release's
    Gaussian functions come from scipy.special. (The simulated partition imports it: a board does not.)"""
    probe = (
        "import sys; import clients.device_app, fl_metamorphosis.privacy.release_gate, "
        "fl_metamorphosis.privacy.feature_noise, fl_metamorphosis.training.inference; "
        "print(sorted(m for m in ('scipy.stats', 'dp_accounting', 'opacus') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]
