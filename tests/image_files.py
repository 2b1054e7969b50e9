"""Image datasets on disk for the file-reading tests: solid-colour images in each layout the readers know."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

RED, GREEN, BLUE, WHITE = (220, 20, 20), (20, 200, 40), (30, 40, 210), (250, 250, 250)
COLOURS = [RED, GREEN, BLUE, WHITE, (120, 60, 180), (240, 200, 30)]
JPEG_TOLERANCE = 12  # a solid colour survives JPEG within a few levels; 12 leaves room for chroma subsampling

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Path:
    """A solid-colour image; JPEG or PNG by the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def make_folder(root: Path, rows: list[dict[str, str]] | None = None, header: list[str] | None = None) -> Path:
    """A folder layout: images in two subfolders and labels.csv; by default 6 rows with split and identity."""
    if rows is None:
        rows = [
            {"file": f"{'a' if i < 3 else 'b/deep'}/img{i}.{'png' if i % 2 else 'jpg'}", "hair": hair, "age": age}
            | {"split": split, "identity": ident}
            for i, (hair, age, split, ident) in enumerate(
                [
                    ("red", "10", "train", "7"),
                    ("black", "9", "Train", "7"),
                    ("red", "30", "TEST", "12"),
                    ("blond", "9", "train", "3"),
                    ("black", "10", "test", "3"),
                    ("red", "30", "train", "12"),
                ]
            )
        ]
        for i, row in enumerate(rows):
            solid(root / row["file"], COLOURS[i])
    header = header or list(rows[0])
    lines = [",".join(header)] + [",".join(row.get(c, "") for c in header) for row in rows]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def write_labels(root: Path, text: str) -> None:
    (root / "labels.csv").write_text(text)


def make_celeba(root: Path, n: int = 6, *, nested: bool = False, identity: bool = True) -> Path:
    """CelebA's layout with n images: attribute i is 1 for image k when (i + k) is even; partition by k % 3."""
    images = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    rows = []
    for k in range(n):
        name = f"{k + 1:06d}.jpg"
        solid(images / name, COLOURS[k % len(COLOURS)])
        rows.append(name + "  " + " ".join("1" if (i + k) % 2 == 0 else "-1" for i in range(40)))
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(CELEBA_ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{k + 1:06d}.jpg {k % 3}\n" for k in range(n)))
    if identity:
        (root / "identity_CelebA.txt").write_text("".join(f"{k + 1:06d}.jpg {100 + k // 2}\n" for k in range(n)))
    return root


def make_utkface(root: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        solid(root / name, COLOURS[i % len(COLOURS)])
    return root
