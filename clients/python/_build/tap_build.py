"""A self-contained PEP 517 / PEP 660 build backend for saliency-tap (standard library only).

Why not setuptools: with build isolation pip must fetch the backend from an index (fails offline),
and without it a stock Python 3.11 venv's setuptools 65 has no `bdist_wheel` (the `wheel` package is
not installed). This backend needs nothing, so `pip install clients/python` works online, offline and
with or without --no-build-isolation. Metadata comes from pyproject.toml's [project] table.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # clients/python
PACKAGE = "saliency_tap"


# -- pyproject.toml ----------------------------------------------------------------------------------
def _load_toml(path: str) -> dict:
    try:
        import tomllib                          # Python >= 3.11
    except ImportError:
        tomllib = None
    with open(path, "rb") as f:
        data = f.read()
    if tomllib is not None:
        return tomllib.loads(data.decode("utf-8"))
    return _mini_toml(data.decode("utf-8"))


def _mini_toml(text: str) -> dict:
    """Enough TOML for this pyproject.toml on Python < 3.11: [tables], key = "str" | ["str", ...] | number."""
    root: dict = {}
    table = root
    pending = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if '"' not in raw else raw.strip()
        if pending is not None:
            pending[1].append(line)
            if line.endswith("]"):
                key, parts = pending
                table[key] = re.findall(r'"((?:[^"\\]|\\.)*)"', " ".join(parts))
                pending = None
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^\[([^\]]+)\]$", line)
        if m:
            table = root
            for part in m.group(1).split("."):
                table = table.setdefault(part.strip().strip('"'), {})
            continue
        key, _, value = line.partition("=")
        key, value = key.strip().strip('"'), value.strip()
        if value.startswith("[") and not value.endswith("]"):
            pending = (key, [value])
        elif value.startswith("["):
            table[key] = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
        elif value.startswith('"'):
            table[key] = value[1:value.rindex('"')]
        else:
            table[key] = value
    return root


def _project() -> dict:
    return _load_toml(os.path.join(HERE, "pyproject.toml"))["project"]


def _dist_name(p: dict) -> str:
    return re.sub(r"[-_.]+", "_", p["name"])


def _metadata(p: dict) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {p['version']}",
             f"Summary: {p.get('description', '')}"]
    if "requires-python" in p:
        lines.append(f"Requires-Python: {p['requires-python']}")
    if "license" in p and isinstance(p["license"], dict) and "text" in p["license"]:
        lines.append(f"License: {p['license']['text']}")
    for dep in p.get("dependencies", []):
        lines.append(f"Requires-Dist: {dep}")
    for extra, deps in p.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for dep in deps:
            marker = f'extra == "{extra}"'
            lines.append(f"Requires-Dist: {dep}; {marker}" if ";" not in dep else f"Requires-Dist: {dep} and {marker}")
    readme = p.get("readme")
    body = ""
    if isinstance(readme, str) and os.path.exists(os.path.join(HERE, readme)):
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(HERE, readme), encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _entry_points(p: dict) -> str:
    scripts = p.get("scripts", {})
    if not scripts:
        return ""
    return "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())


def _dist_info_files(p: dict) -> dict:
    files = {"METADATA": _metadata(p),
             "WHEEL": "Wheel-Version: 1.0\nGenerator: saliency-tap tap_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             "top_level.txt": PACKAGE + "\n"}
    ep = _entry_points(p)
    if ep:
        files["entry_points.txt"] = ep
    return files


def _package_files():
    root = os.path.join(HERE, PACKAGE)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if fn.endswith((".py", ".typed", ".pyi")):
                full = os.path.join(dirpath, fn)
                yield full, os.path.relpath(full, HERE).replace(os.sep, "/")


def _write_wheel(wheel_directory: str, entries) -> str:
    p = _project()
    name = f"{_dist_name(p)}-{p['version']}"
    dist_info = f"{name}.dist-info"
    path = os.path.join(wheel_directory, f"{name}-py3-none-any.whl")
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        def add(arcname: str, data: bytes) -> None:
            info = zipfile.ZipInfo(arcname, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")

        for arcname, data in entries:
            add(arcname, data)
        for fn, text in _dist_info_files(p).items():
            add(f"{dist_info}/{fn}", text.encode("utf-8"))
        record.append(f"{dist_info}/RECORD,,")
        z.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2026, 1, 1, 0, 0, 0)),
                   "\n".join(record) + "\n")
    return os.path.basename(path)


# -- PEP 517 hooks --------------------------------------------------------------------------------------
def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    p = _project()
    dist_info = f"{_dist_name(p)}-{p['version']}.dist-info"
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    for fn, text in _dist_info_files(p).items():
        with open(os.path.join(metadata_directory, dist_info, fn), "w", encoding="utf-8") as f:
            f.write(text)
    return dist_info


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    entries = []
    for full, rel in _package_files():
        with open(full, "rb") as f:
            entries.append((rel, f.read()))
    return _write_wheel(wheel_directory, entries)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """PEP 660: a wheel whose .pth file puts this source tree on sys.path."""
    return _write_wheel(wheel_directory, [(f"__editable__.{PACKAGE}.pth", (HERE + "\n").encode("utf-8"))])


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    base = f"{_dist_name(p)}-{p['version']}"
    path = os.path.join(sdist_directory, f"{base}.tar.gz")
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as t:
        def add_bytes(rel: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{base}/{rel}")
            info.size, info.mtime, info.mode = len(data), 1767225600, 0o644
            t.addfile(info, io.BytesIO(data))

        for rel in ["pyproject.toml", "README.md", "_build/tap_build.py"]:
            with open(os.path.join(HERE, rel), "rb") as f:
                add_bytes(rel, f.read())
        for full, rel in _package_files():
            with open(full, "rb") as f:
                add_bytes(rel, f.read())
        add_bytes("PKG-INFO", _metadata(p).encode("utf-8"))
    return os.path.basename(path)
