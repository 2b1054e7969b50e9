"""A device's privacy state on its own disk: what it has spent, so a restart never resets it.

One file in the device's state folder holds its DP-SGD step history (an Opacus accountant's state), the
noise multiplier it calibrated when it first trained and its per-pair release counts. The device writes
the file (atomically, ``checkpoint.py``) BEFORE its reply leaves: whatever the server may have received
is already counted, whether the device then crashes or not.

Its last reply to each kind of request is kept beside it (``ReplyMemo``: ``replies/<kind>-<request
digest>.ckpt``, so whether a request was answered already is one lookup of a file name, and the state
file that every message reads stays small). The last replies make a repeated request free. A server that
crashed and resumed asks again for the round it lost; when the request is identical (same message kind,
same weights, same config, so the same round), the device sends its earlier reply again, byte for byte.
Sending one release twice tells the receiver nothing new, so it costs no privacy and counts once;
anything else, even one changed config value, is a new request that trains or releases again, and is
counted again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_checkpoint, write_checkpoint
from ..privacy import StepHistory

STATE_FILE = "privacy_state.ckpt"


@dataclass
class DeviceState:
    history: StepHistory = field(default_factory=StepHistory)
    noise_multiplier: float | None = None  # calibrated once, at the device's first training round
    releases: dict[str, torch.Tensor] | None = None  # ReleaseLedger.state_dict()

    @classmethod
    def load(cls, folder: Path) -> DeviceState:
        """The state saved in ``folder``, or a fresh one if the device has never answered a request."""
        file = Path(folder) / STATE_FILE
        if not file.exists():
            return cls()
        blob = read_checkpoint(file, "device")
        meta = json.loads(blob["meta"])
        return cls(
            history=StepHistory.of(meta["history"]),
            noise_multiplier=meta["noise_multiplier"],
            releases=blob.get("releases"),
        )

    def save(self, folder: Path, *, durable: bool = True) -> None:
        meta = {"history": self.history.as_list(), "noise_multiplier": self.noise_multiplier}
        blob: dict[str, Any] = {"meta": json.dumps(meta)}
        if self.releases is not None:
            blob["releases"] = self.releases
        write_checkpoint(Path(folder) / STATE_FILE, "device", blob, durable=durable)


class ReplyMemo:
    """The device's last reply to each kind of request, one file per kind, named by the request's digest."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / "replies"

    def _path(self, kind: str, request: str) -> Path:
        return self.folder / f"{kind}-{request}.ckpt"

    def replay(self, kind: str, request: str) -> dict[str, Any] | None:
        """The reply already sent to this exact request, or None."""
        path = self._path(kind, request)
        return read_checkpoint(path, "device")["reply"] if path.exists() else None

    def remember(self, kind: str, request: str, reply: dict[str, Any], *, durable: bool = True) -> None:
        """Keep ``reply`` as the answer to ``request``; earlier replies of ``kind`` are dropped after it is
        written (a crash in between leaves an older memo, which still only answers its own request)."""
        path = self._path(kind, request)
        write_checkpoint(path, "device", {"reply": reply}, durable=durable)
        for old in self.folder.glob(f"{kind}-*.ckpt"):
            if old != path:
                old.unlink(missing_ok=True)

    def last(self, kind: str) -> dict[str, Any] | None:
        """The reply last remembered for ``kind`` (for inspection and tests), or None."""
        files = sorted(self.folder.glob(f"{kind}-*.ckpt"), key=lambda f: f.stat().st_mtime_ns)
        return read_checkpoint(files[-1], "device")["reply"] if files else None
