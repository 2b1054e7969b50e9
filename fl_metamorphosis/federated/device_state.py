"""A device's privacy state on its own disk: what it has spent, so a restart never resets it.

One file in the device's state folder holds its DP-SGD step history (an Opacus accountant's state), the
noise multiplier it calibrated when it first trained, its per-pair release counts, and its last reply to
each kind of request. The device writes the file (atomically, ``checkpoint.py``) BEFORE its reply leaves:
whatever the server may have received is already counted, whether the device then crashes or not.

The last replies make a repeated request free. A server that crashed and resumed asks again for the
round it lost; when the request is identical (same message kind, same weights, same config, so the
same round), the device sends its earlier reply again, byte for byte. Sending one release twice tells
the receiver nothing new, so it costs no privacy and counts once; anything else, even one changed
config value, is a new request that trains or releases again, and is counted again.
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
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {"request": digest, "reply": ...}

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
            replies=blob.get("replies", {}),
        )

    def save(self, folder: Path) -> None:
        meta = {"history": self.history.as_list(), "noise_multiplier": self.noise_multiplier}
        blob: dict[str, Any] = {"meta": json.dumps(meta), "replies": self.replies}
        if self.releases is not None:
            blob["releases"] = self.releases
        write_checkpoint(Path(folder) / STATE_FILE, "device", blob)

    def replay(self, kind: str, request: str) -> dict[str, Any] | None:
        """The reply already sent to this exact request, if the last request of ``kind`` was it."""
        last = self.replies.get(kind)
        return last["reply"] if last is not None and last["request"] == request else None

    def remember(self, kind: str, request: str, reply: dict[str, Any]) -> None:
        self.replies[kind] = {"request": request, "reply": reply}
