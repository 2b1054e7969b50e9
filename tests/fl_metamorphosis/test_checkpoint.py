"""The checkpoint format: round trips, atomic writes, and files that are not ours, cut short or hostile."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fl_metamorphosis import checkpoint as ck
from fl_metamorphosis.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from metamorphosis_cli.main import main


class _RunsCode:
    """Unpickling this calls ``os.system``: what a hostile 'checkpoint' would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _wrapped(body: bytes, kind: str = "run") -> bytes:
    """``body`` behind a header with a correct digest: passes every check but ``weights_only``."""
    header = {"version": ck.VERSION, "kind": kind, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return ck.MAGIC + json.dumps(header).encode() + b"\n" + body


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    payload = {"w": torch.randn(3, 2), "meta": "x", "n": 3, "nested": {"a": [1.5, None, True]}}
    write_checkpoint(tmp_path / "a.ckpt", "model", payload)
    back = read_checkpoint(tmp_path / "a.ckpt", "model")
    assert torch.equal(back["w"], payload["w"]) and back["nested"] == payload["nested"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]  # no temporary file left


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_file_crafted_to_run_code_is_refused_and_the_code_never_runs(tmp_path, wrapped):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"generator": _RunsCode(marker)}, buffer)
    file = tmp_path / "round_001.ckpt"
    file.write_bytes(_wrapped(buffer.getvalue()) if wrapped else buffer.getvalue())
    match = "refused" if wrapped else "not a fl-metamorphosis checkpoint"
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(file, "run")
    assert not marker.exists()
    # the audit command, given the folder, says so in one line and runs nothing either
    (tmp_path / "checkpoints").mkdir()
    file.rename(tmp_path / "checkpoints" / "round_001.ckpt")
    assert main(["audit", str(tmp_path)]) == 2
    assert not marker.exists()


def test_truncated_tampered_foreign_or_other_kind_files_get_one_clear_error(tmp_path):
    file = tmp_path / "m.ckpt"
    write_checkpoint(file, "model", {"w": torch.ones(1000)})
    raw = file.read_bytes()
    cases = {
        "truncated": raw[: len(raw) - 100],
        "does not match its SHA-256": raw[:-10] + bytes(10),
        "not a fl-metamorphosis checkpoint": b"hello",
        "header is unreadable": ck.MAGIC + b"{not json\n",
        "checkpoint version 99": raw.replace(b'"version": 1', b'"version": 99', 1),
    }
    for expected, content in cases.items():
        file.write_bytes(content)
        with pytest.raises(CheckpointError, match=expected) as err:
            read_checkpoint(file, "model")
        assert str(file) in str(err.value)
    file.write_bytes(raw)
    with pytest.raises(CheckpointError, match="holds a 'model' checkpoint, expected 'device'"):
        read_checkpoint(file, "device")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.ckpt", "model")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    file = tmp_path / "state.ckpt"
    write_checkpoint(file, "device", {"v": torch.tensor(1)})

    def crash(*_args):
        raise OSError("disk gone")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_checkpoint(file, "device", {"v": torch.tensor(2)})
    assert int(read_checkpoint(file, "device")["v"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.ckpt"]


def test_kill_9_during_writes_never_leaves_a_broken_checkpoint(tmp_path):
    # a writer rewriting a 40 MB checkpoint in a loop, killed at an arbitrary moment: the file reads
    script = (
        "import sys, torch\n"
        "from fl_metamorphosis.checkpoint import write_checkpoint\n"
        "i = 0\n"
        "while True:\n"
        "    write_checkpoint(sys.argv[1], 'run', {'i': i, 'w': torch.full((10_000_000,), float(i))})\n"
        "    i += 1\n"
        "    print(i, flush=True)\n"
    )
    file = tmp_path / "round_001.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", script, str(file)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"  # one complete write, then kill during later ones
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    blob = read_checkpoint(file, "run")
    assert float(blob["w"][0]) == blob["i"] and float(blob["w"][-1]) == blob["i"]
