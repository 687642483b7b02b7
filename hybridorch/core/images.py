"""The local images hybridorch knows how to build offline, and the build contexts it assembles for them.

There is no registry: `hybridorch.local/<name>:<tag>` is built from `images/<name>/Dockerfile` (next to the
stack file, or the repository's examples/images); the Docker backend does the building, this module only plans it.
Each build is also tagged `<tag>-<12 hex of the recipe's content>` (content_ref), and that is the reference the
Kubernetes manifests use: a node can never run a stale build under a reused tag. A recipe with an executable
`prepare` (a VM disk, say) has it run once per content hash into a cached directory whose files join the
build context (see prepared()).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from hybridorch.core.safeload import read_input
from hybridorch.errors import BackendError, InputError

LOCAL_REGISTRY = "hybridorch.local"
# Debian's busybox-static installs here; the dynamically linked `busybox` package uses the same path
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
# built-in recipes: examples/images in a checkout, shipped as package hybridorch.recipes in the wheel
_INSTALLED_IMAGES = Path(__file__).resolve().parents[1] / "recipes"
_REPO_IMAGES = _INSTALLED_IMAGES if _INSTALLED_IMAGES.is_dir() else \
    Path(__file__).resolve().parents[2] / "examples" / "images"
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)
PREPARE = "prepare"
PREPARE_TIMEOUT = 900.0   # a Debian root from the apt mirror, mkfs and qemu-img: ~1 min on 2 cores
_COPY_BUSYBOX = re.compile(r"^\s*(?:COPY|ADD)\s+(?:--\S+\s+)*busybox\s", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Recipe:
    """How to build one local image: its Dockerfile directory and the local images it is built FROM."""

    ref: str
    directory: Path
    parents: tuple[str, ...]
    needs_busybox: bool
    content_ref: str = ""   # ref re-tagged by the content of this recipe and its parents' (see content_ref())

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"

    @property
    def prepare(self) -> Path | None:
        """An executable `prepare` beside the Dockerfile makes files the build COPYs (a VM disk, a kernel)."""
        path = self.directory / PREPARE
        return path if path.is_file() else None

    def assemble(self, dest: Path) -> Path:
        """Copy the recipe into `dest` (an empty build context), adding the static busybox when it is COPYed
        and the files its `prepare` step made."""
        shutil.copytree(self.directory, dest, dirs_exist_ok=True)
        if self.needs_busybox and not (dest / "busybox").exists():
            shutil.copy2(static_busybox(), dest / "busybox")
        if self.prepare is not None:
            shutil.copytree(prepared(self), dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".done"))
        return dest


def prepared(recipe: Recipe) -> Path:
    """The output directory of the recipe's `prepare OUTDIR`, run once per recipe content (the content_ref
    hash) and cached under ~/.cache/hybridorch/prepared: a disk image takes minutes, a rebuild must not."""
    from hybridorch import proc
    from hybridorch.core.runtime import cache_root

    name = recipe.ref[len(LOCAL_REGISTRY) + 1:].split(":", 1)[0].replace("/", "_")
    out = cache_root() / "prepared" / f"{name}-{recipe.content_ref.rsplit('-', 1)[-1]}"
    if (out / ".done").exists():
        return out
    new = out.with_name(out.name + f".new{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    # the script may call back into this package (python3 -m hybridorch...), installed or not
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                       os.environ.get("PYTHONPATH", "")) if p)
    try:
        proc.run(["env", f"HYBRIDORCH_PYTHON={sys.executable}", f"PYTHONPATH={path}", str(recipe.prepare),
                  str(new)], what=f"preparing image {recipe.ref} ({recipe.prepare})", timeout=PREPARE_TIMEOUT)
        (new / ".done").write_text(recipe.content_ref + "\n")
        shutil.rmtree(out, ignore_errors=True)
        new.rename(out)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return out


def is_local(ref: str) -> bool:
    return ref.startswith(LOCAL_REGISTRY + "/")


# The busybox guest of a VM without a disk of its own (a nested workload's inner containers under runc), as an
# image a cluster boots with KubeVirt's kernelBoot: built by the kubernetes backend from the same initramfs the
# local target boots; named by the stack, the workload and a digest of what the guest runs
GUEST_REPOSITORY_PREFIX = f"{LOCAL_REGISTRY}/guest-"


def guest_image_ref(stack: str, workload: str, digest: str) -> str:
    return f"{GUEST_REPOSITORY_PREFIX}{stack}-{workload}:{digest[:16]}"


def is_guest_image(ref: str) -> bool:
    return ref.startswith(GUEST_REPOSITORY_PREFIX)


def image_dirs(stack_file: str | None = None) -> list[Path]:
    """Where recipes are looked up, first match wins: $HYBRIDORCH_IMAGES, <stack dir>/images, examples/images."""
    dirs = [Path(p) for p in os.environ.get("HYBRIDORCH_IMAGES", "").split(os.pathsep) if p]
    if stack_file:
        dirs.append(Path(stack_file).resolve().parent / "images")
    dirs.append(_REPO_IMAGES)
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


MAX_FROM_DEPTH = 32                # local images built FROM local images: deeper is a generated loop, not a stack
MAX_CONTEXT_BYTES = 8 * 2**30      # a recipe directory is a build context docker sends whole


def find_recipe(ref: str, dirs: list[Path], _chain: tuple[str, ...] = ()) -> Recipe | None:
    """The recipe of a hybridorch.local image, or None when the image is not one hybridorch can build."""
    if not is_local(ref):
        return None
    if len(_chain) >= MAX_FROM_DEPTH:
        raise InputError(f"image {_chain[0]}: its recipes are built FROM local images more than {MAX_FROM_DEPTH} "
                         "levels deep")
    name = ref[len(LOCAL_REGISTRY) + 1:].split(":", 1)[0].split("@", 1)[0]
    for base in dirs:
        directory = base / name
        dockerfile = directory / "Dockerfile"
        if dockerfile.is_file():
            text = read_input(str(dockerfile), "a Dockerfile")   # the one reader: bounded, UTF-8, one-line errors
            parents = tuple(p for p in _FROM.findall(text) if is_local(p))
            digest = _recipe_digest(directory, parents, dirs, _chain + (ref,))
            return Recipe(ref, directory, parents, bool(_COPY_BUSYBOX.search(text)), _pinned(ref, digest))
    return None


def content_ref(ref: str, dirs: list[Path]) -> str:
    """The reference a built image is rendered by: `hybridorch.local/httpd:1` -> `hybridorch.local/httpd:1-<hash>`,
    the hash over the recipe directory (paths, bytes, executable bits) and its local parents' recipes. Images
    without a recipe, and references by digest, are returned unchanged."""
    recipe = find_recipe(ref, dirs)
    return recipe.content_ref if recipe else ref


def _pinned(ref: str, digest: str) -> str:
    if "@" in ref:
        return ref
    name, _, tag = ref[len(LOCAL_REGISTRY) + 1:].partition(":")
    return f"{LOCAL_REGISTRY}/{name}:{(tag or 'latest')[:110]}-{digest[:12]}"


def _recipe_digest(directory: Path, parents: tuple[str, ...], dirs: list[Path], chain: tuple[str, ...]) -> str:
    # the static busybox some recipes COPY is added at build time from the host and is not part of the key
    h = hashlib.sha256()
    # a symlink is part of the context as a link (docker sends it as one): its target, never what it points to
    files = sorted(p for p in directory.rglob("*") if p.is_symlink() or p.is_file())
    if sum(p.lstat().st_size for p in files) > MAX_CONTEXT_BYTES:
        raise InputError(f"image recipe {directory}: the build context is larger than "
                         f"{MAX_CONTEXT_BYTES // 2**30} GiB (docker would send all of it)")
    for path in files:
        rel = path.relative_to(directory).as_posix().encode()
        if path.is_symlink():
            h.update(rel + b"\0l" + os.readlink(path).encode(errors="surrogateescape"))
            continue
        executable = b"x" if path.stat().st_mode & 0o111 else b"-"
        content = hashlib.sha256()
        with open(path, "rb") as fh:   # in chunks: a build context may hold large files
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                content.update(chunk)
        h.update(rel + b"\0" + executable + content.digest())
    for parent in parents:
        recipe = None if parent in chain else find_recipe(parent, dirs, chain)   # a cycle: build_order reports it
        h.update(parent.encode() + b"\0" + (recipe.content_ref.encode() if recipe else b"-"))
    return h.hexdigest()


def build_order(ref: str, dirs: list[Path]) -> list[Recipe]:
    """The recipes to build for `ref`, parents first; raises BackendError naming the image that has none."""
    order: list[Recipe] = []
    seen: set[str] = set()

    def visit(image: str, chain: tuple[str, ...]) -> None:
        if image in chain:
            raise BackendError(f"image {image} is built FROM itself ({' -> '.join(chain + (image,))})")
        if image in seen:
            return
        recipe = find_recipe(image, dirs)
        if recipe is None:
            raise BackendError(missing_image_message(image, dirs))
        for parent in recipe.parents:
            visit(parent, chain + (image,))
        seen.add(image)
        order.append(recipe)

    visit(ref, ())
    return order


def missing_image_message(ref: str, dirs: list[Path]) -> str:
    where = ", ".join(str(d) for d in dirs) or str(_REPO_IMAGES)
    if is_local(ref):
        name = ref[len(LOCAL_REGISTRY) + 1:].split(":", 1)[0]
        return (f"image {ref} is missing and there is no recipe images/{name}/Dockerfile in {where}: "
                f"add one, or build it yourself with `docker build -t {ref} DIR`")
    return (f"image {ref} is missing and there is no registry to pull from: build it (`docker build -t {ref} DIR`) "
            f"or load it (`docker load -i FILE`) before `hybridorch up`")


def static_busybox() -> Path:
    """Debian busybox-static's binary; a dynamically linked one cannot run in a FROM scratch image."""
    for path in BUSYBOX_PATHS:
        if os.path.isfile(path) and is_static_elf(Path(path)):
            return Path(path)
    raise BackendError("no statically linked busybox found (needed to build the local images): "
                       "apt-get install busybox-static")


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP), i.e. statically linked."""
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF":
            return False
        bits64, little = header[4] == 2, header[5] == 1
        end = "<" if little else ">"
        if bits64:
            phoff, = struct.unpack(end + "Q", header[32:40])
            phentsize, phnum = struct.unpack(end + "HH", header[54:58])
        else:
            phoff, = struct.unpack(end + "I", header[28:32])
            phentsize, phnum = struct.unpack(end + "HH", header[42:46])
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
    return True
