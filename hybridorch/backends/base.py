"""The small interface every backend implements, and the registry that finds backends by name.

Backends are imported lazily by name so that commands which do not touch a runtime never pay for the
docker or kubernetes SDK import.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch.errors import BackendError

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.render.stack import Rendered

# target name -> "module:Class"; adding a backend is a new module plus one line here
REGISTRY: dict[str, str] = {
    "local": "hybridorch.backends.local:LocalBackend",
    "docker": "hybridorch.backends.docker:DockerBackend",
    "qemu": "hybridorch.backends.qemu:QemuBackend",
    "kubernetes": "hybridorch.backends.kubernetes:KubernetesBackend",
}


@dataclass(frozen=True)
class WorkloadStatus:
    name: str
    runtime: str
    state: str                      # a runtime.State: running | ready | pending | stopped | failed | absent
    ports: tuple[str, ...] = ()     # e.g. "127.0.0.1:8080->8080/tcp"
    accelerator: str | None = None  # kvm | tcg for VMs
    uptime_seconds: float | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        # plain strings: YAML (safe_dump) cannot represent the StrEnums
        out = {"name": self.name, "runtime": str(self.runtime), "state": str(self.state), "ports": list(self.ports),
               "accelerator": self.accelerator,
               "uptimeSeconds": None if self.uptime_seconds is None else round(self.uptime_seconds, 1),
               "detail": self.detail}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Kept:
    """Something `down`/`delete` left in place on purpose: what, why, and the exact command that removes it."""

    what: str          # e.g. "PersistentVolumeClaim shop/data-db-0", "volume hybridorch-shop-db-0-data"
    reason: str        # e.g. "data (kept without --delete-data)"
    remove: str        # a command a user can paste

    def __str__(self) -> str:
        return f"kept {self.what}: {self.reason}; remove it with: {self.remove}"


@dataclass(frozen=True)
class Removal:
    """What `down`/`delete` removed, and what it kept (data without --delete-data, namespaces holding objects
    hybridorch did not make)."""

    removed: tuple[str, ...] = ()
    kept: tuple[Kept, ...] = ()

    def __add__(self, other: Removal) -> Removal:
        return Removal(self.removed + other.removed, self.kept + other.kept)

    @property
    def data_kept(self) -> bool:
        return any(k.reason.startswith("data") for k in self.kept)


class Backend(ABC):
    """up/status/logs/down for one kind of runtime. Each backend owns its SDK and raises only BackendError."""

    name = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def up(self, plan: Plan, rendered: Rendered, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        """Make the plan real; idempotent (unchanged workloads are left alone, changed ones replaced)."""

    @abstractmethod
    def status(self, plan: Plan) -> list[WorkloadStatus]:
        """The state of every workload of the plan (absent ones included)."""

    @abstractmethod
    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Container logs or VM console lines of one workload."""

    @abstractmethod
    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Remove everything this tool created for the stack, and nothing else. Data (volumes, claims, disks)
        outlives it unless `delete_data`; the result says what was removed and what was kept."""


def get_backend(target: str, **options: Any) -> Backend:
    try:
        module_name, cls_name = REGISTRY[target].split(":")
    except KeyError:
        raise BackendError(f"unknown target {target!r}: use one of {', '.join(sorted(REGISTRY))}") from None
    module = importlib.import_module(module_name)
    backend: Backend = getattr(module, cls_name)(**options)
    return backend
