"""`pip install .` (not editable) into an empty virtualenv gives a working `hybridorch`, templates included."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_install_ships_cli_templates_and_schemas(tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "tests",
                                                            "e2e", "manifests"))
    env_dir = tmp_path / "venv"
    # the system site-packages provide the dependencies, so the test needs no network; the package itself
    # is installed into the empty venv from the copied tree
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(src)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "examples" / "shop.yaml", elsewhere / "shop.yaml")
    out = subprocess.run([str(env_dir / "bin" / "hybridorch"), "plan", "shop.yaml"], cwd=elsewhere,
                         capture_output=True, text=True, check=True).stdout
    assert "recommender-plugin  sandboxed" in out
    rendered = subprocess.run([str(env_dir / "bin" / "hybridorch"), "render", "shop.yaml"], cwd=elsewhere,
                              capture_output=True, text=True, check=True).stdout
    assert "kind: Deployment" in rendered and "kind: VirtualMachine" in rendered
    where = subprocess.run([str(py), "-c", "import hybridorch, pathlib; print(pathlib.Path(hybridorch.__file__).parent)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    installed = Path(where)
    assert installed.is_relative_to(env_dir), installed
    shipped = sorted(p.relative_to(installed / "templates").as_posix() for p in (installed / "templates").rglob("*.j2"))
    expected = sorted(p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*.j2"))
    assert shipped == expected and shipped, shipped
    assert (installed / "recipes" / "httpd" / "Dockerfile").is_file()
    assert (installed / "recipes" / "busybox" / "Dockerfile").is_file()
    for schema in ("stack-v1alpha1.schema.json", "kubernetes-1.34-schema.json", "kubevirt-schema.json"):
        assert (installed / "data" / schema).is_file(), schema
