"""The wheel a board installs: the library and the command, no generic top-level names, device commands work."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):  # built from a copy: setuptools writes build/ beside the source
        shutil.copy(ROOT / name, source / name)
    for package in ("fl_metamorphosis", "metamorphosis_cli"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("fl_metamorphosis-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_installs_only_names_that_cannot_collide(wheel):
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fl_metamorphosis", "metamorphosis_cli"}
    entry_points = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    assert "metamorphosis = metamorphosis_cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_a_board_with_the_wheel_runs_the_device_commands_and_is_told_what_needs_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "board"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the dependencies, not this checkout
    install = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "-q", "--no-deps"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=300)
    command = env_dir / "bin" / "metamorphosis"

    def run(*args):
        return subprocess.run([str(command), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import fl_metamorphosis; print(fl_metamorphosis.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert where.stdout.startswith(str(site))  # the installed copy, not the repository's
    key = run("deploy", "device-key", "--out", str(tmp_path / "keys"), "--name", "pi-1")
    assert key.returncode == 0, key.stderr
    assert (tmp_path / "keys" / "pi-1.pub").read_text().startswith("ecdsa-sha2-nistp384")
    simulate = run("simulate")
    assert simulate.returncode == 2 and "run it from a clone of the repository" in simulate.stderr
    assert "Traceback" not in simulate.stderr
