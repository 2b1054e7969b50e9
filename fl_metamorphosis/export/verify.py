"""An export checked against the model it came from, on the run's own test images.

1. With the noise off, the ONNX device part and heads against PyTorch: the largest absolute difference
   of any clipped feature and any logit (the export fails above ``TOLERANCE``).
2. With the noise on, each task's accuracy over ``draws`` releases of every test image: the PyTorch model
   (seeded noise: an auditor's simulation), the ONNX fp32 pipeline through the edge runtime (fresh OS
   noise, as a device releases) and, for an int8 export, the int8 pipeline. The int8 drop is measured
   paired: the same noise draw is added to the fp32 and the int8 features, so it is the quantisation's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..audit.saved_run import SavedModel
from ..data import MultiTaskDataset
from ..edge.manifest import Manifest
from ..edge.os_noise import secret_noise
from ..edge.runtime import CloudHeads, EdgeDevice
from ..privacy import release
from ..privacy.randomness import Randomness
from .onnx_export import DevicePart

TOLERANCE = 1e-4  # float32 graphs: what ONNX Runtime's kernel order may change, far below any noise
DRAWS = 5


def _spread(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def verify_export(out, manifest: Manifest, model: SavedModel, test: MultiTaskDataset, draws: int = DRAWS) -> Manifest:
    images, labels = test.images, test.labels.numpy()
    device = DevicePart(model.generator, manifest.clip_norm, manifest.clip_p).eval()
    with torch.no_grad():
        torch_clipped = device(images)
        torch_logits = [head(torch_clipped[:, t]).numpy() for t, head in enumerate(model.heads)]
    edge, cloud = EdgeDevice(out), CloudHeads(out)
    clipped = edge.clipped_features(images.numpy())
    device_diff = float(np.abs(clipped - torch_clipped.numpy()).max())
    head_diff = max(
        float(np.abs(cloud.logits(t.name, torch_clipped[:, i].numpy()) - torch_logits[i]).max())
        for i, t in enumerate(manifest.tasks)
    )
    if max(device_diff, head_diff) > TOLERANCE:
        raise RuntimeError(
            f"the ONNX export differs from PyTorch by {max(device_diff, head_diff):.2e} (device {device_diff:.2e}, "
            f"heads {head_diff:.2e}), above {TOLERANCE:g}: report this with the run's config"
        )
    released = [t for t in manifest.tasks if t.released]
    int8 = manifest.device_model_int8 is not None
    edge8, cloud8 = (EdgeDevice(out, int8=True), CloudHeads(out, int8=True)) if int8 else (None, None)
    clipped8 = edge8.clipped_features(images.numpy()) if int8 else None
    acc: dict[str, dict[str, list[float]]] = {k: {t.name: [] for t in released} for k in ("torch", "onnx_fp32")}
    if int8:
        acc |= {k: {t.name: [] for t in released} for k in ("onnx_int8", "int8_drop")}
    index = {t.name: i for i, t in enumerate(manifest.tasks)}
    for k in range(draws):
        rng = Randomness.seeded(model.cfg.train.seed + 505 + k)
        fresh = edge.release(images.numpy())
        for t in released:
            i = index[t.name]
            # the library's own release at this task's noise (its clip leaves clipped features as they are)
            task_dp = model.cfg.feature_dp.model_copy(update={"noise_std": t.noise_std})
            noised = release(torch_clipped[:, i : i + 1], task_dp, rng)[:, 0]
            with torch.no_grad():
                pred = model.heads[i].predict(model.heads[i](noised)).numpy()
            acc["torch"][t.name].append(float((pred == labels[:, i]).mean()))
            acc["onnx_fp32"][t.name].append(float((cloud.predict(t.name, fresh[t.name]) == labels[:, i]).mean()))
            if int8:
                noise = secret_noise(manifest.mechanism, clipped[:, i].shape, t.noise_std)
                fp32 = float((cloud.predict(t.name, clipped[:, i] + noise) == labels[:, i]).mean())
                q = float((cloud8.predict(t.name, clipped8[:, i] + noise) == labels[:, i]).mean())
                acc["onnx_int8"][t.name].append(q)
                acc["int8_drop"][t.name].append(fp32 - q)
    accuracy = {
        **manifest.accuracy,
        **{kind: {t: _spread(v) for t, v in per_task.items()} for kind, per_task in acc.items()},
        "draws": draws,
        "images": len(test),
        "onnx_vs_torch_max_abs_diff": {"device": device_diff, "heads": head_diff},
    }
    return dataclasses.replace(manifest, accuracy=accuracy)
