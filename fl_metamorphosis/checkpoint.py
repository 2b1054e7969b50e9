"""The one writer and reader of saved state: run checkpoints, trained models, a device's privacy state.

A file is a magic line, a JSON header (format version, kind, payload length, SHA-256 of the payload) and
the payload: a ``torch.save`` of tensors and plain values only. Reading checks each in turn, so a file
that is not ours, of another version or kind, cut short, or altered gets one error naming the file and
what is wrong. The payload is then read with ``torch.load(weights_only=True)``: whatever passed the
digest, a checkpoint can never run code (a file crafted with a matching digest is still only data).

The digest detects truncation and accidental or naive tampering; it is not a signature (whoever can
write the file can recompute it). ``weights_only`` is what keeps a hostile file from running code.

Nor can a hostile file make the reader allocate more than the file's own size. ``torch.save`` writes a zip
whose entries are stored uncompressed, but ``torch.load`` also inflates deflated entries, so a crafted 100 kB
payload could declare a 100 MB tensor (or gigabytes). Before ``torch.load`` sees the payload, its zip directory
is read and every entry must be stored uncompressed, so the payload's entries add up to no more than the
payload itself: what is loaded is bounded by what was read from disk.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed to disk, and
replace the target with one ``os.replace``; a kill at any moment leaves the previous file intact.
``durable=False`` skips the two ``fsync`` calls: the write is still atomic and survives the writer's
death (the kernel holds it), but not the machine's. Simulated devices write that way: they share one
machine with the run they belong to, and an fsync per message was a third of a device's overhead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"FL-METAMORPHOSIS CHECKPOINT\n"
VERSION = 1
# what a file holds: a federated run's state after a round, a trained model (central), a device's state
KINDS = ("run", "model", "device")


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint of this version; the message names the file and why."""


def write_checkpoint(path: Path, kind: str, payload: dict[str, Any], *, durable: bool = True) -> None:
    """Write ``payload`` (tensors, bytes, str, int, float, bool, None in dicts and lists) to ``path`` atomically."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = {"version": VERSION, "kind": kind, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, MAGIC + json.dumps(header).encode() + b"\n" + body, durable=durable)


def write_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a reader sees the old file or the
    new one, never a part; with ``durable``, flushed to disk, the rename included."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def read_checkpoint(path: Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """The payload of a checkpoint of ``kind`` (or one of several) written by ``write_checkpoint``, or
    ``CheckpointError``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(
            f"{path}: not a fl-metamorphosis checkpoint (no header; a plain torch/pickle file is never loaded, "
            "it could run code): re-run the experiment that wrote it"
        )
    line_end = raw.find(b"\n", len(MAGIC))
    try:
        header = json.loads(raw[len(MAGIC) : line_end])
        version, found_kind, length, digest = header["version"], header["kind"], header["length"], header["sha256"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: its header is unreadable (the file is cut short or corrupted)") from None
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version}, this version of fl-metamorphosis reads {VERSION}")
    kinds = (kind,) if isinstance(kind, str) else kind
    if found_kind not in kinds:
        raise CheckpointError(f"{path}: holds a {found_kind!r} checkpoint, expected {' or '.join(map(repr, kinds))}")
    body = raw[line_end + 1 :]
    if len(body) != length:
        raise CheckpointError(f"{path}: truncated or padded: {len(body)} payload bytes, the header says {length}")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{path}: its content does not match its SHA-256 digest: corrupted or tampered with")
    _check_expansion(path, body)
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused: it holds something other than tensors and plain values ({first})"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: its payload is a {type(payload).__name__}, not a dict")
    return payload


def _check_expansion(path: Path, body: bytes) -> None:
    """Refuse a payload that would load into more memory than it takes on disk: anything but torch's zip of
    uncompressed entries (what ``write_checkpoint`` writes), checked from the zip directory before any entry
    is read. The sizes ``torch.load`` allocates are those this directory declares (it checks them as it
    reads), so a payload that passes cannot expand."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as err:
        raise CheckpointError(
            f"{path}: refused: its payload is not the zip archive torch.save writes ({err}); re-run the "
            "experiment that wrote it"
        ) from None
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    declared = sum(e.file_size for e in entries)
    if compressed or declared > len(body):
        raise CheckpointError(
            f"{path}: refused: its payload declares {declared:,} bytes once unpacked from {len(body):,} on disk"
            + (f" ({len(compressed)} compressed entries, e.g. {compressed[0]!r})" if compressed else "")
            + "; write_checkpoint stores every entry uncompressed, so this file was not written by it and could "
            "expand in memory (a compression bomb): re-run the experiment that wrote it"
        )


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- what the files hold -------------------------------------------------------------------------------

RUN_FILE = "round_{:03d}.ckpt"  # in a run folder's checkpoints/
INITIAL_FILE = "initial.ckpt"  # beside them: the weights before round 1 (a "model" file), those of round 0's query


@dataclass
class RunCheckpoint:
    """A federated run after a complete round: everything ``--resume`` needs to go on exactly."""

    round: int
    method: str
    config: dict[str, Any]
    generator: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]
    strategy: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # the strategy's own state
    ledger: dict[str, Any] = field(default_factory=dict)  # ServerLedger.state_dict()
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl so far
    audits: list[dict[str, Any]] = field(default_factory=list)  # audits.jsonl so far
    rng: dict[str, Any] = field(default_factory=dict)  # capture_rng()
    binding: dict[str, int] = field(default_factory=dict)  # node id -> the device it speaks for (server/replies.py)


def save_run(folder: Path, ckpt: RunCheckpoint) -> Path:
    """Write ``ckpt`` as ``folder/round_NNN.ckpt``; return the file."""
    file = Path(folder) / RUN_FILE.format(ckpt.round)
    meta = {k: getattr(ckpt, k) for k in ("round", "method", "config", "ledger", "rows", "audits", "binding")}
    meta["rng"] = {k: v for k, v in ckpt.rng.items() if k != "torch"}
    payload = {
        "meta": json.dumps(meta),
        "generator": ckpt.generator,
        "heads": ckpt.heads,
        "strategy": ckpt.strategy,
        "torch_rng": ckpt.rng.get("torch", torch.get_rng_state()),
    }
    write_checkpoint(file, "run", payload)
    return file


def load_run(file: Path) -> RunCheckpoint:
    blob = read_checkpoint(file, "run")
    try:
        meta = json.loads(blob["meta"])
        return RunCheckpoint(
            round=int(meta["round"]),
            method=str(meta["method"]),
            config=meta["config"],
            generator=blob["generator"],
            heads=blob["heads"],
            strategy=blob["strategy"],
            ledger=meta["ledger"],
            rows=meta["rows"],
            audits=meta["audits"],
            rng={**meta["rng"], "torch": blob["torch_rng"]},
            binding={str(k): int(v) for k, v in meta.get("binding", {}).items()},  # absent before it was kept
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: a run checkpoint without {err}: written by another version?") from None


def latest_run(folder: Path) -> Path | None:
    """The newest ``round_NNN.ckpt`` in ``folder`` (None if there is none)."""
    files = sorted(Path(folder).glob("round_*.ckpt"))
    return files[-1] if files else None


def save_model(file: Path, method: str, generator: dict, heads: dict, config: dict[str, Any]) -> None:
    """A trained model (``central``): what ``audit`` needs to rebuild and attack it."""
    meta = json.dumps({"method": method, "config": config})
    write_checkpoint(file, "model", {"meta": meta, "generator": generator, "heads": heads})


def load_model(file: Path) -> tuple[str, dict[str, Any], dict, dict]:
    """(method, config, generator state, heads state) of a model or run checkpoint."""
    blob = read_checkpoint(file, ("model", "run"))
    try:
        meta = json.loads(blob["meta"])
        return str(meta["method"]), meta["config"], blob["generator"], blob["heads"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: a model checkpoint without {err}: written by another version?") from None


def capture_rng() -> dict[str, Any]:
    """The server's random states: torch's, Python's and NumPy's global generators."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
