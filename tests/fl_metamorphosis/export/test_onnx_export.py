"""``metamorphosis export``: the ONNX device part and heads compute what the trained model computes, the
exported pipeline keeps the run's accuracy under the run's noise, and int8's cost is measured."""

import json
import shutil

import numpy as np
import pytest
import torch

from fl_metamorphosis.audit.saved_run import load_saved
from fl_metamorphosis.config import ConfigError
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.edge import CloudHeads, EdgeDevice, ManifestError, load_manifest
from fl_metamorphosis.export import export_run
from fl_metamorphosis.export.onnx_export import DevicePart, last_release_steps
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy.feature_noise import gaussian_epsilon
from fl_metamorphosis.training import released_features
from metamorphosis_cli.main import main

pytestmark = pytest.mark.slow

DRAWS = 20  # per pipeline: the spread is estimated from them, and 5 underestimated it now and then


def _model_and_test(run):
    model = load_saved(run)[0]
    return model, load_dataset(model.cfg.data, model.cfg.train.seed).test


def test_the_onnx_device_part_and_heads_equal_pytorch_with_the_noise_off(exported_run):
    run, export = exported_run
    model, test = _model_and_test(run)
    fdp = model.cfg.feature_dp
    with torch.no_grad():
        expected = DevicePart(model.generator, fdp.clip_norm, 2)(test.images)
        logits = [head(expected[:, t]).numpy() for t, head in enumerate(model.heads)]
    got = EdgeDevice(export).clipped_features(test.images.numpy())
    assert got.shape == (len(test), 2, *model.generator.feature_shape)
    assert np.abs(got - expected.numpy()).max() <= 1e-5
    norms = np.linalg.norm(got.reshape(len(test), 2, -1), axis=-1)
    assert norms.max() <= fdp.clip_norm + 1e-5  # the clip is in the graph
    cloud = CloudHeads(export)
    for t, name in enumerate(test.task_names):
        assert np.abs(cloud.logits(name, expected[:, t].numpy()) - logits[t]).max() <= 1e-5


def test_the_exported_pipeline_keeps_the_runs_accuracy_within_its_noise_spread(exported_run):
    run, export = exported_run
    model, test = _model_and_test(run)
    labels = test.labels.numpy()
    edge, cloud = EdgeDevice(export), CloudHeads(export)
    # the run's own pipeline (PyTorch, the library's release) and the export's (ONNX, the edge's OS noise)
    torch_acc, onnx_acc = np.zeros((DRAWS, 2)), np.zeros((DRAWS, 2))
    for k in range(DRAWS):
        released = released_features(model.generator, test.images, model.cfg.feature_dp, 1000 + k)
        fresh = edge.release(test.images.numpy())
        for t, name in enumerate(test.task_names):
            with torch.no_grad():
                torch_acc[k, t] = (model.heads[t](released[:, t]).argmax(1).numpy() == labels[:, t]).mean()
            onnx_acc[k, t] = (cloud.predict(name, fresh[name]) == labels[:, t]).mean()
    spread = np.sqrt((torch_acc.var(axis=0, ddof=1) + onnx_acc.var(axis=0, ddof=1)) / 2)  # pooled, per draw
    # two means of DRAWS draws each: their difference has std spread * sqrt(2 / DRAWS); one image is 1/n
    tolerance = 3 * spread * np.sqrt(2 / DRAWS) + 1 / len(test)
    assert np.all(np.abs(onnx_acc.mean(0) - torch_acc.mean(0)) <= tolerance), (onnx_acc, torch_acc)
    # the run's last logged accuracy is one draw of the same release
    run_acc = json.loads((export / "manifest.json").read_text())["accuracy"]["run"]
    for t, name in enumerate(test.task_names):
        assert abs(run_acc[name] - onnx_acc[:, t].mean()) <= 3 * spread[t] * np.sqrt(1 + 1 / DRAWS) + 1 / len(test)


def test_the_manifest_states_the_release_and_the_int8_cost(exported_run):
    run, export = exported_run
    manifest = load_manifest(export)
    cfg = load_saved(run)[0].cfg
    assert manifest.method == "metamorphosis" and manifest.input_shape == (1, 8, 16)
    assert manifest.mechanism == "gaussian" and manifest.clip_norm == cfg.feature_dp.clip_norm
    for task in manifest.tasks:  # a central run has no release gate: every task at the configured noise
        assert task.released and task.noise_std == cfg.feature_dp.noise_std and task.noise_step == 1.0
        expected = gaussian_epsilon(task.noise_std, 2 * manifest.clip_norm, cfg.feature_dp.delta)
        assert task.epsilon == pytest.approx(expected)
    acc = manifest.accuracy
    assert acc["onnx_vs_torch_max_abs_diff"]["device"] <= 1e-5
    for name in ("left", "right"):
        assert len(acc["int8_drop"][name]["values"]) == acc["draws"]
        assert abs(acc["int8_drop"][name]["mean"]) <= 0.1  # reported; a tiny model loses next to nothing
    assert (export / "device.int8.onnx").stat().st_size < (export / "device.onnx").stat().st_size
    assert manifest.privacy["feature_release"]["all_tasks_epsilon"] > max(t.epsilon for t in manifest.tasks)



def test_a_task_the_gate_noised_harder_keeps_its_noise_and_a_withheld_one_is_not_released(exported_run, tmp_path):
    run, _ = exported_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # the last round's query: every device released left at noise step 2 and withheld right
    with (copy / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"round": 9, "released_noise": {"left": 2.0}, "withheld": {"left": 0, "right": 3}}) + "\n")
    assert last_release_steps(read_jsonl(copy / "metrics.jsonl"), ["left", "right"]) == {"left": 2.0, "right": None}
    manifest = export_run(copy, tmp_path / "export", samples=0)
    assert not (tmp_path / "export" / "samples.npz").exists()  # no data images unless asked
    left, right = manifest.tasks
    assert left.released and left.noise_std == pytest.approx(2 * load_saved(copy)[0].cfg.feature_dp.noise_std)
    assert not right.released and right.noise_std is None
    device = EdgeDevice(tmp_path / "export")
    images = load_dataset(load_saved(copy)[0].cfg.data, 0).test.images[:8].numpy()
    assert set(device.release(images)) == {"left"}
    with pytest.raises(ManifestError, match="task 'right' is not released"):
        device.release(images, ["right"])


def test_the_export_command_writes_the_folder_and_refuses_what_it_cannot_export(exported_run, tmp_path, capsys):
    run, _ = exported_run
    assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 0
    said = capsys.readouterr().err
    assert "left: noise 0.25" in said and "ONNX vs PyTorch" in said
    assert {p.name for p in (tmp_path / "e").iterdir()} == {
        "device.onnx", "head_left.onnx", "head_right.onnx", "manifest.json", "samples.npz",
    }  # fmt: skip
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--method 'universal'"):
        export_run(run, tmp_path / "y", method="universal")
