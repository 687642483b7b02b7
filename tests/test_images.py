"""Content-derived image references: a recipe's content (and its local parents') decides the tag manifests use."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hybridorch.core import images
from hybridorch.errors import BackendError
from tests.conftest import ROOT

EXAMPLE_IMAGES = ROOT / "examples" / "images"


def copy_recipes(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_IMAGES, tmp_path / "images")
    return tmp_path / "images"


def test_content_ref_keeps_the_human_tag_and_adds_a_content_hash():
    ref = images.content_ref("hybridorch.local/httpd:1", [EXAMPLE_IMAGES])
    assert ref.startswith("hybridorch.local/httpd:1-") and len(ref.rsplit("-", 1)[1]) == 12
    assert images.content_ref("hybridorch.local/httpd:1", [EXAMPLE_IMAGES]) == ref          # deterministic
    assert images.find_recipe("hybridorch.local/httpd:1", [EXAMPLE_IMAGES]).content_ref == ref
    assert images.content_ref("hybridorch.local/busybox", [EXAMPLE_IMAGES]).startswith(
        "hybridorch.local/busybox:latest-")


def test_content_ref_changes_with_the_recipe_and_with_its_parent(tmp_path: Path):
    dirs = [copy_recipes(tmp_path)]
    httpd, busybox = (images.content_ref(f"hybridorch.local/{n}:1", dirs) for n in ("httpd", "busybox"))
    assert httpd == images.content_ref("hybridorch.local/httpd:1", [EXAMPLE_IMAGES])   # same bytes, same tag
    (dirs[0] / "httpd" / "httpd.sh").write_text("#!/bin/sh\nexec /bin/busybox httpd \"$@\"\n")
    changed = images.content_ref("hybridorch.local/httpd:1", dirs)
    assert changed != httpd and images.content_ref("hybridorch.local/busybox:1", dirs) == busybox
    with open(dirs[0] / "busybox" / "Dockerfile", "a") as fh:
        fh.write("# a parent's change rebuilds its children\n")
    assert images.content_ref("hybridorch.local/httpd:1", dirs) not in (httpd, changed)
    (dirs[0] / "httpd" / "httpd.sh").chmod(0o644)   # the executable bit is content too
    before = images.content_ref("hybridorch.local/httpd:1", dirs)
    (dirs[0] / "httpd" / "httpd.sh").chmod(0o755)
    assert images.content_ref("hybridorch.local/httpd:1", dirs) != before


def test_images_without_a_recipe_or_by_digest_are_unchanged(tmp_path: Path):
    assert images.content_ref("postgres:16", [EXAMPLE_IMAGES]) == "postgres:16"
    assert images.content_ref("hybridorch.local/no-recipe:1", [EXAMPLE_IMAGES]) == "hybridorch.local/no-recipe:1"
    digest = "hybridorch.local/httpd@sha256:" + "0" * 64
    assert images.content_ref(digest, [EXAMPLE_IMAGES]) == digest


def test_a_recipe_cycle_still_gets_a_tag(tmp_path: Path):
    for name, parent in (("a", "b"), ("b", "a")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"FROM hybridorch.local/{parent}:1\n")
    assert images.content_ref("hybridorch.local/a:1", [tmp_path]).startswith("hybridorch.local/a:1-")


def test_a_recipes_prepare_step_runs_once_per_content_and_fails_in_one_line(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    recipe_dir = tmp_path / "images" / "made"
    recipe_dir.mkdir(parents=True)
    (recipe_dir / "Dockerfile").write_text("FROM scratch\nCOPY made.txt /\n")
    runs = tmp_path / "runs"
    prepare = recipe_dir / "prepare"
    prepare.write_text(f'#!/bin/sh\necho run >> {runs}\necho "$HYBRIDORCH_PYTHON" > "$1/made.txt"\n')
    prepare.chmod(0o755)
    dirs = [tmp_path / "images"]
    recipe = images.find_recipe("hybridorch.local/made:1", dirs)
    assert recipe is not None and recipe.prepare == prepare
    context = recipe.assemble(tmp_path / "ctx1")
    assert (context / "made.txt").read_text().strip() and not (context / ".done").exists()
    images.find_recipe("hybridorch.local/made:1", dirs).assemble(tmp_path / "ctx2")
    assert runs.read_text() == "run\n"            # cached by the recipe's content
    prepare.write_text("#!/bin/sh\necho 'no mirror reachable' >&2\nexit 3\n")
    with pytest.raises(BackendError, match=r"preparing image hybridorch.local/made:1 .*: no mirror reachable$"):
        images.find_recipe("hybridorch.local/made:1", dirs).assemble(tmp_path / "ctx3")
    assert not list((tmp_path / "cache" / "hybridorch" / "prepared").glob("*.new*"))
