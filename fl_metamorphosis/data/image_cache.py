"""The decoded-image cache: the files a reader listed, as one ``uint8 [N, C, size, size]`` array.

It is cached on disk because federated rounds re-read the same images many times and decoding JPEGs would then
dominate each round; the cache is a ``.npy`` opened memory-mapped, so clients that share a machine share the page
cache instead of each holding a copy. Its folder is named by a hash over each file's path, byte size and
modification time (plus the decode settings), so replacing an image invalidates it without anyone having to
remember to clear a cache. Labels are deliberately not cached: they are cheap to re-read and the choice of tasks
changes between experiments, while the pixels do not. An unreadable image raises :class:`DatasetFileError`
naming it; images are dropped only when the caller asks (``skip_bad=True``), and then counted and logged.

An image's header is trusted for nothing: a 100 kB PNG can declare 10000 x 10000 pixels and decode to 300 MB
of RGB, per decoding thread. So each image's declared size is checked against ``max_pixels`` right after its
header is read and before any pixel is decoded; Pillow's own bomb check (a warning at ~89 MP, an error at
twice that) is far above what a board can hold and only warns in between, so it is not relied on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from ..config import MAX_IMAGE_PIXELS, PILLOW_PIXEL_LIMIT
from .labelled_files import DatasetFileError, LabelledFiles

logger = logging.getLogger(__name__)

# Part of the cache key: bump it whenever the decode pipeline changes, so old caches are not reused.
# 2: images above the pixel cap are refused (the cap is in the key too: with skip_bad it decides which rows stay).
_CACHE_VERSION = 2
_CHUNK = 1024  # images decoded per batch of thread-pool work: bounds the decoded arrays held in flight
_PROGRESS_OVER = 2000  # decodes of more files than this log their progress


def decode_images(
    files: LabelledFiles,
    *,
    size: int,
    colour: Literal["rgb", "grey"],
    cache_dir: Path,
    skip_bad: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [M, C, size, size]`` (resized and centre-cropped; C 3 for rgb, 1 for grey) and ``kept``,
    the ``int64 [M]`` rows of ``files`` they belong to (all rows unless ``skip_bad`` dropped unreadable ones).

    The result is cached under ``cache_dir`` and returned memory-mapped; a later call with the same files
    (same paths, sizes and modification times) and settings reads the cache without opening any image.
    An image declaring more than ``max_pixels`` pixels is refused (dropped with ``skip_bad``) undecoded.
    """
    mode = _pil_mode(colour)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise DatasetFileError(f"image size {size!r} must be a positive integer (pixels per side)")
    if not files.files:
        raise DatasetFileError(f"no images to decode in {str(files.root)!r}")
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetFileError(
            f"cache folder {str(cache_dir)!r} cannot be created ({err}); pick a writable folder"
        ) from None
    max_pixels = _check_max_pixels(max_pixels)
    folder = cache_dir / _cache_name(files, size, colour, skip_bad, max_pixels)

    cached = _load_cache(folder, size, mode)
    if cached is None:
        _build_cache(folder, files, size, mode, skip_bad, max_pixels)
        cached = _load_cache(folder, size, mode)
        if cached is None:  # only if someone deletes or corrupts it between our write and our read
            raise DatasetFileError(f"image cache {str(folder)!r} vanished or is corrupt right after being written")
    images, kept, meta = cached
    if meta["skipped"]:
        logger.warning(
            "%s: %d of %d images were unreadable and dropped (skip_bad=True)", files.root, meta["skipped"], meta["rows"]
        )
    return images, kept


def _check_max_pixels(max_pixels: int) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer):
        raise DatasetFileError(f"max_pixels {max_pixels!r} must be an integer (data.max_image_pixels)")
    if not 1 <= max_pixels <= PILLOW_PIXEL_LIMIT:
        raise DatasetFileError(
            f"max_pixels {max_pixels} must be between 1 and {PILLOW_PIXEL_LIMIT:,} (Pillow's own limit; "
            "data.max_image_pixels)"
        )
    return int(max_pixels)


def _pil_mode(colour: str) -> str:
    modes = {"rgb": "RGB", "grey": "L"}
    if colour not in modes:
        raise DatasetFileError(f"colour {colour!r} is not one of {list(modes)}")
    return modes[colour]


def _relative(path: Path, root: Path) -> str:
    # Relative paths keep the cache valid when the whole dataset folder is moved.
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _cache_name(files: LabelledFiles, size: int, colour: str, skip_bad: bool, max_pixels: int) -> str:
    """A folder name that changes whenever any file, its order, or a decode setting changes.

    Rows are hashed in their order (not sorted) because the cached array is stored in row order: the same
    files listed in another order must not reuse an array whose rows no longer line up with the labels.
    """
    settings = f"v{_CACHE_VERSION}\0{int(size)}\0{colour}\0{bool(skip_bad)}\0{int(max_pixels)}\n"
    digest = hashlib.sha256(settings.encode())
    for path in files.files:
        try:
            stat = os.stat(path)
            signature = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:
            if not skip_bad:
                raise DatasetFileError(
                    f"image {str(path)!r} is listed but missing on disk; restore it, or re-read the dataset"
                ) from None
            signature = "missing"  # decoded as unreadable, so dropped and counted
        digest.update(f"{_relative(path, files.root)}\0{signature}\n".encode())
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", files.root.name) or "dataset"
    return f"{prefix}-{colour}{int(size)}-{digest.hexdigest()[:24]}"


def _load_cache(folder: Path, size: int, mode: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The cached (images, kept, meta), or None when there is none; a damaged cache is removed (then rebuilt)."""
    if not folder.is_dir():
        return None
    channels = 3 if mode == "RGB" else 1
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")
        kept = np.load(folder / "kept.npy", allow_pickle=False)
        if images.dtype != np.uint8 or images.shape != (meta["count"], channels, size, size):
            raise ValueError(f"images.npy has {images.dtype} {images.shape}, meta.json says {meta['count']} images")
        if kept.shape != (meta["count"],):
            raise ValueError(f"kept.npy has shape {kept.shape}, meta.json says {meta['count']} images")
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("image cache %s is damaged (%s); rebuilding it", folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return images, kept.astype(np.int64, copy=False), meta


def _build_cache(folder: Path, files: LabelledFiles, size: int, mode: str, skip_bad: bool, max_pixels: int) -> None:
    """Decode every file into a temporary folder next to ``folder``, then rename it into place in one step, so a
    reader (or a crash) never sees a half-written cache."""
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        kept = _decode_to(tmp / "images.npy", files.files, size, mode, skip_bad, max_pixels)
        np.save(tmp / "kept.npy", kept)
        meta = {
            "root": str(files.root),
            "count": int(kept.size),
            "rows": len(files.files),
            "size": int(size),
            "colour": "rgb" if mode == "RGB" else "grey",
            "skipped": len(files.files) - int(kept.size),
            "seconds": round(time.perf_counter() - start, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            # Another process finished the same cache first: its copy is identical, so use it.
            logger.info("image cache %s was written concurrently; using the existing copy", folder)
        logger.info("decoded %d images into %s in %.1f s", kept.size, folder, meta["seconds"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_to(
    out_path: Path, paths: list[Path], size: int, mode: str, skip_bad: bool, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode ``paths`` in order into the .npy ``out_path``; returns the rows kept (all, unless skip_bad)."""
    channels = 3 if mode == "RGB" else 1
    n = len(paths)
    # Written straight to disk: a dataset's pixels may not fit in memory next to everything else.
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
    ok = np.ones(n, dtype=bool)
    step = max(1, -(-n // 10))
    decode = partial(_decode_one, size=size, mode=mode, max_pixels=max_pixels)
    # Threads, not processes: Pillow releases the GIL while decoding and resizing, and threads share `out`.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for begin in range(0, n, _CHUNK):
            for i, result in enumerate(pool.map(decode, paths[begin : begin + _CHUNK]), start=begin):
                if isinstance(result, np.ndarray):
                    out[i] = result
                elif skip_bad:
                    ok[i] = False
                    logger.debug("skipping unreadable image %s: %s", paths[i], result)
                else:
                    raise DatasetFileError(_refusal(paths[i], result))
                if n > _PROGRESS_OVER and ((i + 1) % step == 0 or i + 1 == n):
                    logger.info("decoding images: %d/%d (%d%%)", i + 1, n, 100 * (i + 1) // n)
    kept = np.flatnonzero(ok).astype(np.int64)
    if kept.size == 0:
        raise DatasetFileError(f"none of the {n} images could be read (e.g. {str(paths[0])!r}); nothing to cache")
    if kept.size < n:
        out = _compact(out, out_path, kept)
    out.flush()
    del out
    return kept


def _compact(out: np.memmap, out_path: Path, kept: np.ndarray) -> np.memmap:
    """Rewrite ``out_path`` holding only the ``kept`` rows, copying in chunks to stay out of memory."""
    compact_path = out_path.with_name("compact.npy")
    compact = np.lib.format.open_memmap(compact_path, mode="w+", dtype=out.dtype, shape=(kept.size, *out.shape[1:]))
    for begin in range(0, kept.size, _CHUNK):
        compact[begin : begin + _CHUNK] = out[kept[begin : begin + _CHUNK]]
    compact.flush()
    del out
    os.replace(compact_path, out_path)
    return compact


class ImageTooLarge(Exception):
    """An image whose header declares more pixels than the cap: refused before a single pixel is decoded."""


def _refusal(path: Path, err: Exception) -> str:
    """The error naming ``path``, why it was refused and the fix."""
    if isinstance(err, ImageTooLarge):
        return (
            f"image {str(path)!r} {err}, and may be a decompression bomb (a small file that decodes to gigabytes): "
            "downscale the image, remove its row, raise data.max_image_pixels if you trust it, or set "
            "data.skip_bad_files = true to drop it"
        )
    return (
        f"image {str(path)!r} is unreadable ({err}); expected an image file Pillow can open "
        "(replace or remove it, or pass skip_bad=True to drop unreadable images)"
    )


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge | None:
    pixels = width * height
    if pixels <= max_pixels:
        return None
    return ImageTooLarge(
        f"declares {width} x {height} = {pixels:,} pixels, above the cap of {max_pixels:,} pixels "
        "(data.max_image_pixels)"
    )


def _decode_one(path: Path, *, size: int, mode: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray | Exception:
    """One image as uint8 CHW, or the exception that made it unreadable or too large (raised by the caller, in
    order). Only the header is read before the size check, so a bomb costs a few kB of reading."""
    try:
        with Image.open(path) as img:
            too_large = _too_large(img.width, img.height, max_pixels)
            if too_large is not None:
                return too_large
            # draft lets the JPEG decoder scale down by 1/2..1/8 while staying >= size: far less work for big photos.
            img.draft(mode, (size, size))
            image = ImageOps.exif_transpose(img).convert(mode)  # phone photos store their rotation in EXIF
            image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as err:  # above twice Pillow's own limit: refused by Image.open itself
        return ImageTooLarge(f"is larger than even Pillow accepts ({err}); the cap is {max_pixels:,} pixels")
    except (OSError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        return err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
