"""The torch-free edge runtime: load an export, release task features with OS noise, apply heads.

Needs only numpy and onnxruntime, so a board that only infers installs neither torch nor Opacus
(``requirements/edge.txt``, docs/devices/edge-runtime.md).
"""

from .manifest import Manifest, ManifestError, TaskRelease, load_manifest
from .runtime import CloudHeads, EdgeDevice, prepare_images

__all__ = ["CloudHeads", "EdgeDevice", "Manifest", "ManifestError", "TaskRelease", "load_manifest", "prepare_images"]
