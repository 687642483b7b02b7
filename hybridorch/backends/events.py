"""What an engine reports while it works: one typed Event per step of a workload (or image), handed to the
`events` sink a caller gives the backend in its options; the library never shows them (the CLI does)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from hybridorch.core.runtime import Named, State


class EventKind(Named):
    """A step of a workload, or of an image a workload runs; in the order a workload usually goes through them."""

    IMAGE_BUILDING = "image building"
    IMAGE_BUILT = "image built"
    IMAGE_LOADING = "image loading"     # into the nodes of a kind cluster
    IMAGE_LOADED = "image loaded"       # (or found there already)
    APPLIED = "applied"                 # its objects accepted by the API server
    CREATED = "created"                 # container created, or a VM's boot files being prepared
    STARTING = "starting"               # container started, waiting for its readiness check
    BOOTING = "booting"                 # libvirt domain defined and started
    PENDING = "pending"                 # Kubernetes: scheduled or being made, not ready yet
    SCHEDULED = "scheduled"             # a soc-test board's pod placed on a node
    RUNNING = "running"
    BOOTED = "booted"                   # a soc-test board's guest runs its /init
    FINISHED = "finished"               # a soc-test board reported every test (or stopped; the detail says)
    ACCEPTED = "accepted"               # a VirtualMachine the API server took where nothing runs it
    READY = "ready"
    UNCHANGED = "unchanged"             # already running with the same spec: left alone
    STOPPED = "stopped"
    FAILED = "failed"
    REMOVED = "removed"

    @property
    def of_image(self) -> bool:
        return self in (EventKind.IMAGE_BUILDING, EventKind.IMAGE_BUILT, EventKind.IMAGE_LOADING,
                        EventKind.IMAGE_LOADED)


# a workload state as `status` reports it -> the event that says a workload reached it (absent: nothing to say)
KIND_OF_STATE: dict[State, EventKind] = {State.READY: EventKind.READY, State.RUNNING: EventKind.RUNNING,
                                         State.PENDING: EventKind.PENDING, State.STOPPED: EventKind.STOPPED,
                                         State.FAILED: EventKind.FAILED}


@dataclass(frozen=True)
class Event:
    """`workload` names the workload (or, for image kinds, the image reference) the event is about; `at` is
    time.monotonic() when it happened, so a display can show the time since its command started."""

    workload: str
    kind: EventKind
    detail: str = ""
    at: float = field(default_factory=time.monotonic)


EventSink = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default sink: nobody listens."""
