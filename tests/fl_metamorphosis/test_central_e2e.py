"""End to end: a tiny ``metamorphosis central`` run through the CLI, then its run folder."""

import json

import numpy as np
import pytest

from fl_metamorphosis.metrics import read_jsonl
from metamorphosis_cli.main import main


@pytest.fixture(scope="module")
def central_run(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("central") / "run"
    args = ["central", "--out", str(out)]
    for item in [*tiny_overrides, "model.feature_dim=32"]:
        args += ["--set", item]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_tiny_central_run_writes_a_sane_summary(central_run):
    out = central_run

    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == ["left", "right"] and summary["command"] == "central"
    for name in ("universal", "metamorphosis"):
        m = summary["methods"][name]
        for t in ("left", "right"):
            assert 0.0 <= m["tasks"][t]["accuracy"] <= 1.0
            assert m["tasks"][t]["chance"] == pytest.approx(0.1, abs=0.06)
            r = m["reconstruction"][t]
            assert -1.0 <= r["ssim"] <= 1.0 and -1.0 <= r["ssim_label_only"] <= 1.0 and r["psnr"] > 0
        for pair in ("left->right", "right->left"):
            attack = m["cross_task_attack"][pair]
            assert 0.0 <= attack["accuracy"] <= 1.0 and 0.0 < attack["chance"] < 0.3
        assert 0 < m["dp_sgd"]["epsilon"] <= 8.0 + 0.05 and m["dp_sgd"]["delta"] == 1e-5
        assert m["wall_seconds"] > 0
        assert set(m["distance_correlation"]) == {"left~input", "right~input", "left~right"}
    assert summary["methods"]["metamorphosis"]["feature_dp"]["epsilon"] > 0
    assert summary["methods"]["universal"]["feature_dp"]["epsilon"] is None  # no feature noise: no claim
    # same floor for both methods: it does not depend on the features
    assert (
        summary["methods"]["universal"]["reconstruction"]["left"]["ssim_label_only"]
        == summary["methods"]["metamorphosis"]["reconstruction"]["left"]["ssim_label_only"]
    )

    rows = read_jsonl(out / "metrics.jsonl")
    assert [(r["method"], r["epoch"]) for r in rows] == [
        ("universal", 1),
        ("universal", 2),
        ("metamorphosis", 1),
        ("metamorphosis", 2),
    ]
    assert rows[1]["epsilon"] > rows[0]["epsilon"]  # spent cumulatively
    for f in ("report.md", "training_curves.png", "reconstruction_grid.png", "model_metamorphosis.ckpt", "config.json"):
        assert (out / f).stat().st_size > 0
    assert "| metamorphosis |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_audit_command_re_audits_the_saved_models_and_exports_what_devices_send(central_run, tmp_path):
    export = tmp_path / "released.npz"
    out = tmp_path / "audit"
    assert (
        main(["audit", str(central_run), "--out", str(out), "--export", str(export), "--attacker-samples", "300"]) == 0
    )
    audit = json.loads((out / "audit.json").read_text())
    trained = json.loads((central_run / "summary.json").read_text())
    assert set(audit["methods"]) == {"universal", "metamorphosis"}
    for name, m in audit["methods"].items():
        assert set(m["cross_task_attack"]) == {"left->right", "right->left"}
        for pair in m["cross_task_attack"].values():  # the headline is the strongest family, with its interval
            assert set(pair["families"]) == {"linear", "mlp", "knn", "boosting"}
            assert pair["accuracy"] == max(pair["families"].values())
            assert pair["ci95"][0] <= pair["accuracy"] <= pair["ci95"][1] and 0 <= pair["p_value"] <= 1
        assert "ssim_features_and_label" in m["reconstruction"]["left"]
        assert 0.0 <= m["membership"]["auc"] <= 1.0 and m["membership"]["members"] > 0
        assert m["dp_sgd"]["epsilon"] == trained["methods"][name]["dp_sgd"]["epsilon"]  # carried, not recomputed
        # same model, same held-out set and release seed as the run's own audit: same task accuracy
        assert m["tasks"]["left"]["accuracy"] == pytest.approx(trained["methods"][name]["tasks"]["left"]["accuracy"])
    for name in ("report.md", "attacks.png", "reconstruction_grid.png"):
        assert (out / name).stat().st_size > 0
    for name in ("universal", "metamorphosis"):
        arrays = np.load(export.with_name(f"released_{name}.npz"))
        n = len(arrays["images"])
        assert arrays["features_left"].shape == (n, 32) and arrays["labels"].shape == (n, 2)
        assert list(arrays["task_names"]) == ["left", "right"]


def test_audit_command_names_a_missing_source(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_config_error_exits_2_and_names_the_field(tmp_path, capsys):
    assert main(["central", "--out", str(tmp_path), "--set", "train.epochs=-1"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["central", "--out", str(tmp_path), "--config", str(tmp_path / "missing.toml")]) == 2


def test_ssim_window_wider_than_the_images_fails_before_training(tmp_path, capsys):
    assert main(["central", "--out", str(tmp_path), "--set", "audit.ssim_kernel=9"]) == 2
    assert "audit.ssim_kernel" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()
