"""The torch-free edge runtime: fresh OS noise of the manifest's size on every release, a device that
may raise its noise but never lower it, clear errors, and no torch in the process."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from noise_fit import assert_fits

from fl_metamorphosis.edge import EdgeDevice, ManifestError, load_manifest
from fl_metamorphosis.edge.cli import main as edge_main
from fl_metamorphosis.edge.os_noise import secret_laplace, secret_normal, secret_uniform


def test_os_noise_has_the_stated_distribution():
    z = secret_normal((200_000,), 0.5)
    assert z.dtype == np.float32
    assert_fits(z / 0.5, "norm")
    b = secret_laplace((200_000,), 0.3)
    assert_fits(b, "laplace", (0, 0.3))
    u = secret_uniform(100_000)
    assert 0 < u.min() and u.max() < 1
    assert not np.array_equal(secret_normal((16,), 1.0), secret_normal((16,), 1.0))


def _samples(export):
    with np.load(export / "samples.npz") as s:
        return s["images"], s["labels"]


@pytest.mark.slow
def test_releases_differ_between_calls_and_carry_the_manifests_noise(exported_run):
    _, export = exported_run
    device = EdgeDevice(export)
    images = np.concatenate([_samples(export)[0]] * 4)  # every row its own draw: 256 x 64 noise values a task
    clipped = device.clipped_features(images)
    first, second = device.release(images), device.release(images)
    for t, task in enumerate(device.manifest.tasks):
        assert not np.array_equal(first[task.name], second[task.name])
        noise = (first[task.name] - clipped[:, t]).ravel()
        # n = 16,384 values: the sample std's relative error is about 1 / sqrt(2n) = 0.55 %
        assert abs(noise.std() / task.noise_std - 1) < 0.03
        assert abs(noise.mean()) < 5 * task.noise_std / math.sqrt(noise.size)
        assert_fits(noise / task.noise_std, "norm")
    louder = EdgeDevice(export, noise_std={"left": 1.0})
    noise = louder.release(images)["left"] - clipped[:, 0]
    assert abs(noise.std() - 1.0) < 0.03
    with pytest.raises(ManifestError, match=r"noise_std\['left'\]=0.1: below the export's 0.25"):
        EdgeDevice(export, noise_std={"left": 0.1})


@pytest.mark.slow
def test_bad_images_and_broken_exports_are_named(exported_run, tmp_path):
    _, export = exported_run
    device = EdgeDevice(export)
    images, _ = _samples(export)
    with pytest.raises(ManifestError, match=r"images: shape \[4, 1, 8, 4\].*\[N, 1, 8, 16\]"):
        device.release(images[:4, :, :, :4])
    with pytest.raises(ManifestError, match=r"outside \[0, 1\]"):
        device.release(images * 255)
    as_uint8 = np.round(images * 16).astype(np.uint8)  # the digits' pixels are 0..16: uint8_scale 1/16
    assert np.abs(device.clipped_features(as_uint8) - device.clipped_features(images)).max() < 1e-5
    broken = tmp_path / "broken"
    broken.mkdir()
    raw = json.loads((export / "manifest.json").read_text())
    del raw["clip_norm"]
    (broken / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="no 'clip_norm'"):
        load_manifest(broken)
    raw["clip_norm"] = 1.0
    (broken / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="names device.onnx, which is missing"):
        load_manifest(broken)


@pytest.mark.slow
def test_the_edge_commands_release_and_predict_in_a_process_without_torch(exported_run, tmp_path):
    _, export = exported_run
    released, predictions = tmp_path / "released.npz", tmp_path / "pred.json"
    # torch cannot be imported in this process: the runtime must not need it
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, *a):\n"
        "        if name.split('.')[0] in ('torch', 'opacus', 'scipy', 'sklearn'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from fl_metamorphosis.edge.cli import main\n"
        f"assert main(['release', {str(export)!r}, '--images', {str(export / 'samples.npz')!r}, "
        f"'--out', {str(released)!r}]) == 0\n"
        f"assert main(['predict', {str(export)!r}, '--features', {str(released)!r}, "
        f"'--labels', {str(export / 'samples.npz')!r}, '--out', {str(predictions)!r}]) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "left: 64 features, gaussian noise 0.25" in done.stdout
    result = json.loads(predictions.read_text())
    _, labels = _samples(export)
    for t, name in enumerate(("left", "right")):
        assert result[name]["accuracy"] == pytest.approx(np.mean(np.array(result[name]["predictions"]) == labels[:, t]))


@pytest.mark.slow
def test_the_edge_commands_fail_with_a_line_not_a_traceback(exported_run, tmp_path, capsys):
    _, export = exported_run
    assert edge_main(["release", str(tmp_path), "--images", "x.npy", "--out", str(tmp_path / "r.npz")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    out = tmp_path / "r.npz"
    args = ["release", str(export), "--images", str(export / "samples.npz"), "--out", str(out)]
    assert edge_main([*args, "--noise-std", "left=0.1"]) == 2
    assert "below the export's 0.25" in capsys.readouterr().err
    assert edge_main([*args, "--key", "pixels"]) == 2
    assert "no 'pixels' array" in capsys.readouterr().err
    assert edge_main([*args, "--task", "left"]) == 0  # one file for one task's owner
    with np.load(out) as released:
        assert released.files == ["features_left"]
    assert "right" not in capsys.readouterr().out
    assert edge_main([*args, "--task", "middle"]) == 2
    assert "task 'middle' is not in this export" in capsys.readouterr().err
