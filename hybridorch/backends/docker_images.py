"""Local images on the Docker engine: the missing ones among a stack's images are built from their recipes
(images/<name>/Dockerfile), parents first, and tagged both by name and by their content-derived tag."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from hybridorch.core import images
from hybridorch.core.labels import LABEL_MANAGED, MANAGED_BY
from hybridorch.errors import BackendError
from hybridorch.backends.docker_api import Sdk, explain
from hybridorch.backends.events import Event, EventKind


def ensure_images(sdk: Sdk, events: Callable[[Event], None], refs: list[str], stack_file: str) -> None:
    """Build the missing local images among `refs`, parents first (also for images that VMs run)."""
    dirs = images.image_dirs(stack_file)
    for ref in dict.fromkeys(refs):
        # the content-derived tag: a recipe that changed since its human tag was built is built again
        if has_image(sdk, images.content_ref(ref, dirs)):
            continue
        for recipe in images.build_order(ref, dirs):
            if not has_image(sdk, recipe.content_ref):
                build(sdk, events, recipe)


def has_image(sdk: Sdk, ref: str) -> bool:
    with sdk.call(f"looking up image {ref}"):
        try:
            sdk.client.images.get(ref)
            return True
        except sdk.errors.ImageNotFound:
            return False


def build(sdk: Sdk, events: Callable[[Event], None], recipe: images.Recipe) -> None:
    events(Event(recipe.ref, EventKind.IMAGE_BUILDING, f"from {recipe.dockerfile}"))
    with tempfile.TemporaryDirectory(prefix="hybridorch-build-") as tmp:
        context = recipe.assemble(Path(tmp) / "context")
        try:
            # pull=False: there is no registry; parents are local images built just before
            image, _ = sdk.client.images.build(path=str(context), tag=recipe.ref, rm=True, forcerm=True,
                                               pull=False, labels={LABEL_MANAGED: MANAGED_BY})
            # also under the content-derived tag that rendered Kubernetes manifests name (images.content_ref)
            image.tag(*recipe.content_ref.rsplit(":", 1))
            events(Event(recipe.ref, EventKind.IMAGE_BUILT))
        except sdk.errors.BuildError as err:
            last = next((str(x.get("stream") or x.get("error", "")).strip() for x in reversed(list(err.build_log))
                         if (x.get("stream") or x.get("error", "")).strip()), str(err))
            raise BackendError(f"building image {recipe.ref} from {recipe.dockerfile} failed: {last}") from err
        except sdk.errors.APIError as err:
            raise BackendError(f"building image {recipe.ref} from {recipe.dockerfile} failed: {explain(err)}") \
                from err
