"""saliency-tap as a package: it builds and installs with no download (offline, with build isolation,
in a fresh venv of this Python), is typed, and its schema for an existing model is unchanged."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "clients" / "python"


def _backend():
    spec = importlib.util.spec_from_file_location("tap_build", PKG / "_build" / "tap_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wheel_contents(tmp_path):
    b = _backend()
    assert b.get_requires_for_build_wheel() == [] and b.get_requires_for_build_editable() == []
    name = b.build_wheel(str(tmp_path))
    assert name.startswith("saliency_tap-") and name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(tmp_path / name) as z:
        names = set(z.namelist())
        assert "saliency_tap/py.typed" in names and "saliency_tap/tap.py" in names
        assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(f"{dist}/METADATA").decode()
        assert "Requires-Dist: pyzmq" in meta and 'Requires-Dist: torch>=2.1; extra == "torch"' in meta
        assert "saliency-tap = saliency_tap.cli:main" in z.read(f"{dist}/entry_points.txt").decode()
        record = z.read(f"{dist}/RECORD").decode().splitlines()
        assert {r.split(",")[0] for r in record} == names
    sdist = b.build_sdist(str(tmp_path))
    import tarfile
    with tarfile.open(tmp_path / sdist) as t:
        assert any(n.endswith("_build/tap_build.py") for n in t.getnames())


def test_mini_toml_reads_this_pyproject_like_tomllib():
    tomllib = pytest.importorskip("tomllib")
    b = _backend()
    text = (PKG / "pyproject.toml").read_text()
    want = tomllib.loads(text)["project"]
    got = b._mini_toml(text)["project"]
    for key in ("name", "version", "requires-python", "dependencies", "optional-dependencies", "scripts"):
        assert got[key] == want[key], key


def test_offline_install_in_fresh_venv(tmp_path):
    """`pip install --no-index clients/python` in a fresh venv (build isolation on, no index): the build
    needs nothing from the network. --system-site-packages provides numpy/pyzmq/torch as installed.
    Where this Python cannot make venvs with pip (Debian without python3-venv), the same install goes
    to a --target directory instead."""
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    try:
        import ensurepip  # noqa: F401
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        py, prefix, script = venv / "bin" / "python", str(venv), venv / "bin" / "saliency-tap"
        cmd = [str(py), "-m", "pip", "install", "--no-index", "--force-reinstall", "--no-deps", str(PKG)]
    except ImportError:
        target = tmp_path / "site"
        py, prefix, script = Path(sys.executable), str(target), target / "bin" / "saliency-tap"
        env["PYTHONPATH"] = str(target)
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(target), str(PKG)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = subprocess.run([str(py), "-c", "import saliency_tap, sys; print(saliency_tap.__file__); "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.split()
    assert out[0].startswith(prefix) and out[1] == "False"   # the installed copy; wire side imports no torch
    cli = subprocess.run([str(script), "fingerprint", str(ROOT / "data/feeds/fmnist/reference.schema.json")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr


def test_schema_of_the_bundled_model_is_unchanged():
    """The feed in data/feeds/fmnist was recorded by saliency-tap 0.1: the same model still gets the
    same layers and fingerprint (the daemon keeps recognising deployed models after an upgrade)."""
    sys.path.insert(0, str(ROOT / "data"))
    try:
        from train_fmnist import FmnistCNN
    finally:
        sys.path.pop(0)
    from saliency_tap import schema_from_model
    recorded = json.loads((ROOT / "data/feeds/fmnist/reference.schema.json").read_text())
    s = schema_from_model(FmnistCNN(), recorded["model"])
    assert [l["name"] for l in s["layers"]] == [l["name"] for l in recorded["layers"]]
    assert s["fingerprint"] == recorded["fingerprint"]
