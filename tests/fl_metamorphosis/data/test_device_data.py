"""A board's data folder and credentials: what `deploy prepare-data`, `certs` and `device-key` write."""

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fl_metamorphosis.config import build_config
from fl_metamorphosis.data.device_folder import DeviceDataError, read_device_folder, read_partition_id
from fl_metamorphosis.deployment.credentials import certificate_names, make_certificates, make_device_key
from fl_metamorphosis.deployment.launch import device_command, prepare_data
from metamorphosis_cli.main import main


def test_prepare_data_writes_each_devices_own_partition_and_reads_back(tmp_path, tiny_overrides):
    cfg = build_config(None, tiny_overrides)
    folders = prepare_data(cfg, 3, tmp_path)
    parts = [read_device_folder(f) for f in folders]
    assert [read_partition_id(f) for f in folders] == [0, 1, 2]
    assert sum(len(train) for train, _ in parts) == cfg.data.train_pairs
    assert parts[0][0].task_names == ["left", "right"] and parts[0][0].image_shape == (1, 8, 16)
    assert not torch.equal(parts[0][0].images[:5], parts[1][0].images[:5])  # each its own pairs


def test_a_missing_or_broken_device_folder_names_the_path(tmp_path):
    with pytest.raises(DeviceDataError, match="does not exist"):
        read_device_folder(tmp_path / "absent")
    (tmp_path / "dataset.json").write_text('{"partition_id": 0, "tasks": [{"name": "left", "num_classes": 10}]}')
    with pytest.raises(DeviceDataError, match="pairs.npz"):
        read_device_folder(tmp_path)


def test_certificates_name_every_host_and_loopback_and_keys_are_openssh_p384(tmp_path):
    files = make_certificates(tmp_path, ["192.0.2.7", "hub.lan"])
    assert set(certificate_names(files.server_cert)) == {"192.0.2.7", "hub.lan", "127.0.0.1", "localhost"}
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert server.issuer == ca.subject
    private, public = make_device_key(tmp_path, "pi")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert load_ssh_private_key(private.read_bytes(), None).curve.name == "secp384r1"
    for path in (private, files.ca_key, files.server_key):
        assert path.stat().st_mode & 0o777 == 0o600


def test_the_device_owners_limits_reach_the_node_config_and_bad_ones_are_refused(tmp_path, tiny_overrides, capsys):
    folder = prepare_data(build_config(None, tiny_overrides), 3, tmp_path / "data")[0]
    limits = {"epsilon-budget": 4.0, "secure-aggregation": "required", "secure-aggregation-min-devices": 5}
    cmd = device_command("hub:8000", None, None, folder, tmp_path / "state", 1, "pi-1", limits=limits)
    node_config = cmd[cmd.index("--node-config") + 1]
    assert "epsilon-budget=4.0 secure-aggregation='required' secure-aggregation-min-devices=5" in node_config
    base = ["deploy", "device", "--superlink", "hub:8000", "--data", str(folder), "--state", str(tmp_path / "s")]
    assert main([*base, "--insecure", "--secure-aggregation-min-devices", "1"]) == 2
    assert "--secure-aggregation-min-devices must be >= 2" in capsys.readouterr().err
