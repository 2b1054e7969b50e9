"""Users' own data end to end: a CelebA-layout folder at 64x64 RGB through `metamorphosis simulate`."""

import json

import pytest
from conftest import ROOT, TINY_OVERRIDES
from image_files import make_celeba, make_folder, solid

from fl_metamorphosis.metrics import read_jsonl
from metamorphosis_cli.main import main

pytestmark = pytest.mark.slow


def _tiny(settings: list[str]) -> list[str]:
    """``--set`` arguments: the tiny preset, then ``settings``."""
    return [arg for item in [*TINY_OVERRIDES, *settings] for arg in ("--set", item)]


@pytest.mark.slow(seconds=35)
def test_a_64px_rgb_celeba_layout_trains_federated_by_identity_end_to_end(tmp_path):
    root = make_celeba(tmp_path / "celeba", n=90)  # 30 train, 30 val, 30 test images; 45 people
    out = tmp_path / "run"
    settings = [
        'data.name="celeba"',
        f'data.root="{root}"',
        f'data.cache_dir="{tmp_path / "cache"}"',
        'data.tasks=["Male", "Smiling"]',
        'federated.partitioning="identity"',
        "audit.eval_samples=30",
        "audit.attacker_samples=60",
    ]
    config = ROOT / "configs" / "rgb64.toml"
    assert main(["simulate", "--config", str(config), "--out", str(out), *_tiny(settings)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2] and all(r["answered"] == 3 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data"]["image_size"] == 64 and summary["config"]["model"]["channels"] == [16, 32, 64, 64]
    tasks = summary["methods"]["metamorphosis"]["tasks"]
    assert set(tasks) == {"Male", "Smiling"} and all(0 <= t["accuracy"] <= 1 for t in tasks.values())
    assert "Male->Smiling" in summary["methods"]["metamorphosis"]["cross_task_attack"]
    assert (out / "reconstruction_grid.png").stat().st_size > 0
    assert len(list((tmp_path / "cache").iterdir())) == 1  # decoded once, shared by the server and the devices


def test_a_folder_with_a_csv_trains_centrally_and_counts_the_images_it_was_told_to_skip(tmp_path):
    folder = tmp_path / "shop"
    rows = []
    for i in range(60):
        shape, colour = ["disc", "box"][i % 2], ["red", "blue", "green"][i % 3]
        rows.append(
            {"file": f"items/{i:03d}.png", "shape": shape, "colour": colour, "split": "test" if i < 20 else "train"}
        )
        solid(folder / rows[-1]["file"], {"red": (200, 0, 0), "blue": (0, 0, 200), "green": (0, 200, 0)}[colour])
    rows.append({"file": "items/missing.png", "shape": "disc", "colour": "red", "split": "train"})
    make_folder(folder, rows)
    out = tmp_path / "run"
    settings = [
        "data.name=folder",
        f'data.root="{folder}"',
        f'data.cache_dir="{tmp_path / "cache"}"',
        'data.tasks=["shape", "colour"]',
        "data.image_size=16",
        "data.skip_bad_files=true",
        "audit.eval_samples=20",
        "audit.attacker_samples=50",
    ]
    assert main(["central", "--out", str(out), *_tiny(settings)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"name": "folder", "train": 40, "test": 20, "skipped": 1}
    assert summary["tasks"] == ["shape", "colour"]
    assert summary["methods"]["metamorphosis"]["tasks"]["colour"]["accuracy"] >= 0
