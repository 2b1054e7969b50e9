"""``manifest.json`` of an export: what the ONNX files compute and how a device must release their output.

``metamorphosis export`` writes it (``fl_metamorphosis/export/``); the edge runtime reads it with no torch
and no pydantic, so it is checked here by hand: a missing or malformed field names itself and the fix.

The release is per task: the feature-DP mechanism, its clip and its noise. A task's noise is the run's
``feature_dp.noise_std`` times the step the devices last released that task at (the release gate raises the
step when a task's features read another task's label); a task that every device withheld in the last
round is exported as not released, and the runtime refuses to release it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "fl-metamorphosis-export/1"
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """An export folder or manifest this runtime cannot use; the message names the field and the fix."""


@dataclass(frozen=True)
class TaskRelease:
    """One task: its head for the cloud and the noise its features leave the device with."""

    name: str
    num_classes: int
    head: str  # ONNX file of the head, relative to the export folder
    released: bool  # false: every device withheld it in the run's last round; the runtime refuses it
    noise_std: float | None  # Gaussian std or Laplace scale; None when not released
    noise_step: float | None  # noise_std / feature_dp.noise_std (the release gate's step)
    epsilon: float | None  # one release of one image's feature of this task (accounted at export)
    head_int8: str | None = None


@dataclass(frozen=True)
class Manifest:
    format: str
    method: str
    input_shape: tuple[int, int, int]  # C, H, W; the model reads float32 NCHW in [0, 1]
    uint8_scale: float  # a uint8 image times this is the model's input (1/255; 1/16 for the digits)
    feature_shape: tuple[int, ...]  # one task's feature
    device_model: str  # ONNX: images [N, C, H, W] -> clipped features [N, T, *feature_shape]
    mechanism: str  # gaussian (L2 clip) or laplace (L1 clip)
    clip_norm: float
    delta: float  # of the Gaussian release (0 for Laplace)
    tasks: tuple[TaskRelease, ...]
    device_model_int8: str | None = None
    privacy: dict[str, Any] = field(default_factory=dict)  # the run's own figures, as its summary gave them
    accuracy: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def clip_p(self) -> int:
        return 2 if self.mechanism == "gaussian" else 1

    def task(self, name: str) -> TaskRelease:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ManifestError(f"task {name!r} is not in this export: its tasks are {[t.name for t in self.tasks]}")

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def _need(d: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: no {key!r}: re-export the run with `metamorphosis export RUN --out DIR`")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ManifestError(f"{where}: {key!r} is {value!r}, not {getattr(kind, '__name__', kind)}: re-export the run")
    return value


def load_manifest(folder: Path) -> Manifest:
    """The manifest of an export folder, checked field by field (and that its ONNX files are there)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST}: pass the folder `metamorphosis export RUN --out DIR` wrote")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not JSON ({err}): re-export the run") from None
    where = str(path)
    fmt = _need(raw, "format", str, where)
    if fmt != FORMAT:
        raise ManifestError(f"{where}: format {fmt!r}, this runtime reads {FORMAT!r}: use the same version for both")
    number = (int, float)
    tasks = []
    for i, t in enumerate(_need(raw, "tasks", list, where)):
        w = f"{where} tasks[{i}]"
        released = _need(t, "released", bool, w)
        noise = t.get("noise_std")
        if released and (not isinstance(noise, number) or noise <= 0):
            raise ManifestError(f"{w}: a released task needs noise_std > 0, got {noise!r}: re-export the run")
        tasks.append(
            TaskRelease(
                name=_need(t, "name", str, w),
                num_classes=_need(t, "num_classes", int, w),
                head=_need(t, "head", str, w),
                released=released,
                noise_std=float(noise) if released else None,
                noise_step=t.get("noise_step"),
                epsilon=t.get("epsilon"),
                head_int8=t.get("head_int8"),
            )
        )
    mechanism = _need(raw, "mechanism", str, where)
    if mechanism not in ("gaussian", "laplace"):
        raise ManifestError(f"{where}: mechanism {mechanism!r}: must be 'gaussian' or 'laplace'")
    manifest = Manifest(
        format=fmt,
        method=_need(raw, "method", str, where),
        input_shape=tuple(_need(raw, "input_shape", list, where)),
        uint8_scale=float(_need(raw, "uint8_scale", number, where)),
        feature_shape=tuple(_need(raw, "feature_shape", list, where)),
        device_model=_need(raw, "device_model", str, where),
        mechanism=mechanism,
        clip_norm=float(_need(raw, "clip_norm", number, where)),
        delta=float(_need(raw, "delta", number, where)),
        tasks=tuple(tasks),
        device_model_int8=raw.get("device_model_int8"),
        privacy=raw.get("privacy", {}),
        accuracy=raw.get("accuracy", {}),
        source=raw.get("source", {}),
    )
    if len(manifest.input_shape) != 3:
        raise ManifestError(f"{where}: input_shape {list(manifest.input_shape)} is not [C, H, W]: re-export the run")
    files = [manifest.device_model, manifest.device_model_int8, *(t.head for t in tasks), *(t.head_int8 for t in tasks)]
    for name in filter(None, files):
        if not (folder / name).is_file():
            raise ManifestError(f"{folder}: the manifest names {name}, which is missing: copy the whole export folder")
    return manifest
