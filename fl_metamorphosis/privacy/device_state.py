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

A spend must never be lost, nor forgotten without the owner saying so:

- ``device_lock``: one message at a time per device. Each handler reads the state, works (trains,
  releases) and writes it back; two processes of one device at once (two ClientApp processes, two
  SuperNodes given one ``state-dir``) would each read the same state and the second write would erase
  the first one's spend. An exclusive ``fcntl.flock`` on a lock file in the state folder is held for the
  whole message, so the second process waits and then reads the first one's spend.
- The participation record: the first time a device with its own data folder (a real deployment, node
  config ``data-dir``) saves its state, it writes ``PARTICIPATION_FILE`` into that data folder, durably,
  naming the state folder and the time. A device whose data folder shows it took part and whose ledger is
  gone (state folder deleted or moved, file missing, a dangling symlink, an unreadable file) refuses to
  answer (``LedgerMissing``) instead of starting a fresh budget. Only the owner's explicit
  ``reset_device_state`` forgets the spend. A simulated device has no data folder of its own: its state
  lives in the run folder, made and deleted with the run by the operator who also runs the server.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, fsync_dir, read_checkpoint, write_atomically, write_checkpoint
from .accounting import StepHistory

STATE_FILE = "privacy_state.ckpt"
LOCK_FILE = "privacy_state.lock"  # in the state folder: held (flock) for the whole of each message
PARTICIPATION_FILE = "privacy_ledger.json"  # in the device's DATA folder: it took part, its ledger is there
LOCK_TIMEOUT_S = 3600.0  # as long as the server waits for a reply (server/replies.py REPLY_TIMEOUT_S)
RESET_HINT = "metamorphosis deploy device --reset-privacy-state"

log = logging.getLogger(__name__)


class DeviceStateRefused(RuntimeError):
    """The device will not answer: its privacy state cannot be trusted or reached. The ClientApp sends the
    message back to the server as a refusal (``clients/device_app.py``, ``guard_device_state``)."""


class LedgerMissing(DeviceStateRefused):
    """The device took part before (or its state file is a broken link, or unreadable) and its ledger is
    gone: answering would start a fresh budget on top of the epsilon already spent."""


class StateBusy(DeviceStateRefused):
    """Another process of this device held its state for longer than the lock's timeout."""


@dataclass
class DeviceState:
    history: StepHistory = field(default_factory=StepHistory)
    noise_multiplier: float | None = None  # calibrated once, at the device's first training round
    releases: dict[str, torch.Tensor] | None = None  # ReleaseLedger.state_dict()

    @classmethod
    def load(cls, folder: Path, data_dir: Path | None = None) -> DeviceState:
        """The state saved in ``folder``, or a fresh one if the device has never answered a request.

        ``data_dir``: the device's own data folder (a real deployment). Where it records that the device took
        part, a missing ledger is ``LedgerMissing``, never a fresh budget; so is a dangling symlink at the
        state file or an unreadable one, with or without a data folder."""
        file = Path(folder) / STATE_FILE
        if file.is_symlink() and not file.exists():
            raise LedgerMissing(
                _missing_message(
                    folder, data_dir, f"{file} is a symlink to {os.readlink(file)!r}, which does not exist"
                )
            )
        if not file.exists():
            record = participation(data_dir) if data_dir is not None else None
            if record is not None:
                raise LedgerMissing(_missing_message(folder, data_dir, f"{file} does not exist", record))
            return cls()
        try:
            blob = read_checkpoint(file, "device")
            meta = json.loads(blob["meta"])
            return cls(
                history=StepHistory.of(meta["history"]),
                noise_multiplier=meta["noise_multiplier"],
                releases=blob.get("releases"),
            )
        except (CheckpointError, OSError, KeyError, TypeError, ValueError) as err:
            raise LedgerMissing(_missing_message(folder, data_dir, f"{file} is unreadable ({err})")) from None

    def save(self, folder: Path, *, durable: bool = True, data_dir: Path | None = None) -> None:
        """Write the state atomically; with ``data_dir``, first record there (once) that this device took part,
        so that losing the ledger later is noticed instead of restarting the budget."""
        if data_dir is not None:
            record_participation(data_dir, folder, durable=durable)
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


@contextmanager
def device_lock(folder: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the device's state exclusively for one message: load -> work -> save.

    Why: a spend must never be lost. Two processes of one device (two ClientApp processes at once, or two
    SuperNodes given one state folder) would otherwise both load the same state, both train, and the second
    save would overwrite the first one's spend. With the lock the second one waits and loads the first one's
    spend. ``fcntl.flock`` is released by the kernel when its holder dies, so a crashed process never leaves
    the device locked; a live holder past ``timeout_s`` is ``StateBusy`` (the server stops waiting by then).
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise LedgerMissing(_missing_message(folder, None, f"the state folder {folder} is a dangling symlink"))
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, folder, timeout_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child (a data loader worker) may share the fd
    finally:
        os.close(fd)


def _acquire(fd: int, folder: Path, timeout_s: float) -> None:
    """Take the exclusive lock on ``fd``, polling until ``timeout_s`` (``flock`` itself has no timeout)."""
    deadline, delay = time.monotonic() + timeout_s, 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StateBusy(
                    f"another process of this device has held its privacy state {folder / LOCK_FILE} for over "
                    f"{timeout_s:.0f} s: is a second SuperNode or ClientApp using state folder {folder} (node "
                    "config state-dir)? Give each device its own state folder, or stop the stuck process"
                ) from None
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.25)


def participation(data_dir: Path) -> dict[str, Any] | None:
    """What the device's data folder records about its taking part, or None if it never saved a state.

    An unreadable record still means the device took part: only the owner's reset removes it."""
    file = Path(data_dir) / PARTICIPATION_FILE
    if not (file.exists() or file.is_symlink()):
        return None
    try:
        record = json.loads(file.read_text())
        return record if isinstance(record, dict) else {"unreadable": str(file)}
    except (OSError, ValueError) as err:
        return {"unreadable": f"{file} ({err})"}


def record_participation(data_dir: Path, state_dir: Path, *, durable: bool = True) -> None:
    """Write, once, into the device's data folder that it took part with its ledger in ``state_dir``.

    Written before the ledger itself: a crash in between leaves a record without a ledger, which refuses
    until the owner resets (nothing was sent, so nothing is lost); the other order could leave a spend whose
    ledger then vanishes unnoticed."""
    file = Path(data_dir) / PARTICIPATION_FILE
    if file.exists():
        return
    record = {
        "state_dir": str(Path(state_dir).resolve()),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "why": "this device has spent privacy budget; its ledger is in state_dir. Without it the device "
        f"refuses to answer; `{RESET_HINT}` forgets the spend on purpose",
    }
    try:
        _write_json(file, record, durable=durable)
    except OSError as err:
        raise DeviceStateRefused(
            f"cannot record in the device's data folder {data_dir} that it took part ({err}): the record is "
            "what keeps a lost ledger from restarting its privacy budget; make the folder (node config "
            "data-dir) writable by the device's user"
        ) from None


def reset_device_state(data_dir: Path, state_dir: Path) -> str:
    """The owner's explicit reset: forget the device's previous spend and let it start a fresh budget.

    The ledger (if any) is moved aside as ``privacy_state.ckpt.forgotten-<time>`` (kept for the owner's
    records, never read again), a dangling link is removed, and the participation record in the data folder
    is cleared. Returns the warning it logs, for the command line to print."""
    data_dir, state_dir = Path(data_dir), Path(state_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"device data folder {data_dir} does not exist: give the folder named by the device's node config "
            "data-dir (its participation record is there)"
        )
    if state_dir.is_symlink() and not state_dir.exists():
        state_dir.unlink()  # a link to nowhere holds no spend; the lock below makes a real folder
    with device_lock(state_dir):
        forgotten = _forget_ledger(state_dir)
        (data_dir / PARTICIPATION_FILE).unlink(missing_ok=True)
        fsync_dir(data_dir)
    record = f"{forgotten}; participation record {data_dir / PARTICIPATION_FILE} cleared"
    message = (
        f"privacy state RESET by the owner: the device's previous spend (DP-SGD steps and released pairs) is "
        f"FORGOTTEN ({record}). Its next request starts a fresh privacy budget in {state_dir}, on top of "
        "whatever it released before."
    )
    log.warning(message)
    return message


def _forget_ledger(state_dir: Path) -> str:
    """Move the ledger out of the way (or drop a dangling link); says what was there."""
    file = state_dir / STATE_FILE
    if file.is_symlink() and not file.exists():
        file.unlink()
        return f"dangling link {file} removed"
    if not file.exists():
        return f"no ledger at {file}"
    try:
        what = f"{DeviceState.load(state_dir).history.steps} DP-SGD steps"
    except LedgerMissing:
        what = "an unreadable ledger"
    aside = file.with_name(f"{STATE_FILE}.forgotten-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
    os.replace(file, aside)
    fsync_dir(state_dir)
    return f"{what} moved to {aside}"


def _missing_message(folder: Path, data_dir: Path | None, what: str, record: dict[str, Any] | None = None) -> str:
    took_part = ""
    if record is not None:
        where = record.get("state_dir", "?") if "unreadable" not in record else f"? ({record['unreadable']})"
        took_part = (
            f" Its data folder {data_dir} records that it took part since {record.get('since', '?')} with its "
            f"ledger in {where}."
        )
    return (
        f"this device's privacy ledger is missing: {what}.{took_part} Answering would start a fresh privacy "
        f"budget on top of the epsilon it already spent, so it refuses every request. Restore the state folder "
        f"{folder} (or point node config state-dir at the ledger's folder), or forget the previous spend on "
        f"purpose with `{RESET_HINT}`"
    )


def _write_json(path: Path, data: dict[str, Any], *, durable: bool) -> None:
    """Atomically (temporary file + rename), and with ``durable`` flushed to disk, rename included."""
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), durable=durable)
