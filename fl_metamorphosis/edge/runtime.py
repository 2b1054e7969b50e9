"""The torch-free edge runtime: a device releases task features, the cloud applies each task's head.

``EdgeDevice`` runs the exported device part (encoder, Cross-SEC and the clip, one ONNX graph) and adds
each task's noise from the OS CSPRNG (``os_noise.py``). The noise is the manifest's or more: a device
may raise it (``noise_std``), never lower it, since the manifest is written by whoever trained the model
and a device decides its own protection. ``CloudHeads`` runs a task's head on the features it received;
each head reads only its own task's feature, as in training.

Needs only numpy and onnxruntime (``requirements/edge.txt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import Manifest, ManifestError, load_manifest
from .os_noise import secret_noise


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def prepare_images(images: np.ndarray, manifest: Manifest) -> np.ndarray:
    """float32 ``[N, C, H, W]`` in [0, 1] from uint8 pixels (times ``uint8_scale``) or floats in [0, 1]."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(manifest.input_shape):
        raise ManifestError(
            f"images: shape {list(x.shape)}, the model reads [N, {', '.join(map(str, manifest.input_shape))}] "
            "(NCHW): resize or transpose them to the manifest's input_shape"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(manifest.uint8_scale)
    if not np.issubdtype(x.dtype, np.floating):
        raise ManifestError(f"images: dtype {x.dtype}: pass uint8 pixels or floats in [0, 1]")
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ManifestError(
            "images: float values outside [0, 1] (or not finite): scale them to [0, 1], or pass the uint8 pixels "
            f"(the runtime multiplies those by {manifest.uint8_scale:g})"
        )
    return x


class EdgeDevice:
    """A device's inference: images in, each released task's clipped and noised feature out.

    Keyword-only arguments:
        int8: run the int8 device model (the export must have one: ``--quantize int8``).
        threads: ONNX Runtime's intra-op threads.
        noise_std: per task name, a noise this device prefers; it must be at least the manifest's.
    """

    def __init__(
        self,
        export_dir: Path,
        *,
        int8: bool = False,
        threads: int = 1,
        noise_std: dict[str, float] | None = None,
    ):
        self.folder = Path(export_dir)
        self.manifest = load_manifest(self.folder)
        model = self.manifest.device_model_int8 if int8 else self.manifest.device_model
        if model is None:
            raise ManifestError(f"{self.folder}: no int8 device model: export with `--quantize int8`, or drop --int8")
        self.session = _session(self.folder / model, threads)
        self.noise = {t.name: t.noise_std for t in self.manifest.tasks if t.released}
        for name, std in (noise_std or {}).items():
            task = self.manifest.task(name)
            if not task.released:
                raise ManifestError(f"noise_std[{name!r}]: the task is not released by this export")
            if not std >= task.noise_std:
                raise ManifestError(
                    f"noise_std[{name!r}]={std}: below the export's {task.noise_std:g}; a device may raise its noise, "
                    "never lower it"
                )
            self.noise[name] = float(std)

    @property
    def released_tasks(self) -> list[str]:
        return list(self.noise)

    def clipped_features(self, images: np.ndarray) -> np.ndarray:
        """``[N, T, *feature_shape]``, clipped, without noise: for checks on the device only, never to send."""
        x = prepare_images(images, self.manifest)
        return self.session.run(None, {"images": x})[0]

    def release(self, images: np.ndarray, tasks: list[str] | None = None) -> dict[str, np.ndarray]:
        """What leaves the device: per released task (or per task of ``tasks``), ``[N, *feature_shape]``
        clipped features plus fresh noise (a new draw on every call; each call is one release of each image,
        and releases compose). Each task's features go to that task's owner only."""
        wanted = self.released_tasks if tasks is None else list(tasks)
        for name in wanted:
            if not self.manifest.task(name).released:
                raise ManifestError(f"task {name!r} is not released by this export (every device withheld it)")
        features = self.clipped_features(images)
        out = {}
        for t, task in enumerate(self.manifest.tasks):
            if task.name not in wanted:
                continue
            clipped = features[:, t]
            out[task.name] = clipped + secret_noise(self.manifest.mechanism, clipped.shape, self.noise[task.name])
        return out


class CloudHeads:
    """The cloud side: each task's head on the features received for that task."""

    def __init__(self, export_dir: Path, *, int8: bool = False, threads: int = 1):
        self.folder = Path(export_dir)
        self.manifest = load_manifest(self.folder)
        self.sessions = {}
        for task in self.manifest.tasks:
            head = task.head_int8 if int8 else task.head
            if head is None:
                raise ManifestError(f"{self.folder}: no int8 head for {task.name!r}: export with `--quantize int8`")
            self.sessions[task.name] = _session(self.folder / head, threads)

    def logits(self, task: str, features: np.ndarray) -> np.ndarray:
        self.manifest.task(task)  # a clear error for an unknown task
        x = np.asarray(features, dtype=np.float32)
        if tuple(x.shape[1:]) != tuple(self.manifest.feature_shape):
            raise ManifestError(
                f"features[{task!r}]: shape {list(x.shape)}, the head reads [N, "
                f"{', '.join(map(str, self.manifest.feature_shape))}]: pass what `release` gave for that task"
            )
        return self.sessions[task].run(None, {"feature": x})[0]

    def predict(self, task: str, features: np.ndarray) -> np.ndarray:
        return self.logits(task, features).argmax(axis=1)
