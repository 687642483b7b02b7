"""The lock of a stack on a cluster: a coordination.k8s.io/v1 Lease per stack in hybridorch's own namespace, held
for one apply/delete/gc/snapshot run, renewed by a thread while the run lasts and taken over once it expires.

Every write carries the resourceVersion it read (create: the name must be free), so of two runs only one wins a
round; the loser reads again. Deciding what a Lease means (free, held, expired) is pure (`lease_state`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Iterator

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_MANAGED, MANAGED_BY, object_labels
from hybridorch.backends.base import LockHeld, LockHolder, LockNotice, takeover_message, waiting_message

LOCK_NAMESPACE = "hybridorch-system"   # hybridorch's own: a stack's namespaces come and go with apply/delete
LEASE_SECONDS = 30                     # a killed run's Lease is taken over this long after its last renewal
RENEW_EVERY = LEASE_SECONDS / 3
POLL = 1.0                             # seconds between reads while another run holds the Lease
ANNOTATION_COMMAND = "hybridorch.dev/lock-command"
ANNOTATION_PID = "hybridorch.dev/lock-pid"
ANNOTATION_HOST = "hybridorch.dev/lock-host"


class LeaseState(Enum):
    FREE = "free"          # absent, or released (no holder)
    HELD = "held"          # renewed within its duration
    EXPIRED = "expired"    # a holder that stopped renewing: a killed run


def lease_name(stack: str) -> str:
    return f"stack-{stack}"


def micro_time(epoch: float) -> str:
    """A MicroTime as the API server writes it."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def lease_state(lease: dict[str, Any] | None, now: float, unchanged_for: float = 0.0) -> LeaseState:
    """What a Lease means at `now` (epoch). Expired: neither its renewTime plus its duration is still ahead, nor
    has this run seen it change for that long (`unchanged_for`: seconds its resourceVersion stayed the same, which
    holds even when this machine's clock and the holder's disagree)."""
    spec = (lease or {}).get("spec") or {}
    if not lease or not spec.get("holderIdentity"):
        return LeaseState.FREE
    duration = spec.get("leaseDurationSeconds")
    duration = duration if isinstance(duration, int) and duration > 0 else LEASE_SECONDS
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if unchanged_for >= duration:
        return LeaseState.EXPIRED
    if renewed is not None and renewed + duration < now:
        return LeaseState.EXPIRED
    return LeaseState.HELD


def lease_holder(lease: dict[str, Any]) -> LockHolder:
    notes = (lease.get("metadata") or {}).get("annotations") or {}
    spec = lease.get("spec") or {}
    pid = notes.get(ANNOTATION_PID, "")
    return LockHolder(pid=int(pid) if isinstance(pid, str) and pid.isdigit() else None,
                      command=str(notes.get(ANNOTATION_COMMAND, "")), started=parse_time(spec.get("acquireTime")),
                      host=str(notes.get(ANNOTATION_HOST, "")))


def lease_body(stack: str, identity: str, command: str, now: float, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The Lease this run writes to take the lock: a fresh acquire, carrying `previous`'s resourceVersion."""
    meta: dict[str, Any] = {"name": lease_name(stack), "namespace": LOCK_NAMESPACE, "labels": object_labels(stack),
                            "annotations": {ANNOTATION_COMMAND: command, ANNOTATION_PID: str(os.getpid()),
                                            ANNOTATION_HOST: socket.gethostname()}}
    transitions = 0
    if previous is not None:
        meta["resourceVersion"] = previous["metadata"]["resourceVersion"]
        transitions = int((previous.get("spec") or {}).get("leaseTransitions") or 0) + 1
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": LEASE_SECONDS,
                     "acquireTime": micro_time(now), "renewTime": micro_time(now), "leaseTransitions": transitions}}


@dataclass
class _Seen:
    """The Lease as last read, and since when (monotonic) its resourceVersion has not changed."""

    version: str = ""
    since: float = 0.0

    def unchanged_for(self, lease: dict[str, Any] | None) -> float:
        version = ((lease or {}).get("metadata") or {}).get("resourceVersion", "")
        now = time.monotonic()
        if version != self.version:
            self.version, self.since = version, now
        return now - self.since


class LeaseLock:
    """One run's hold on one stack's Lease (through a kubernetes ApiClient)."""

    def __init__(self, api_client: Any, stack: str, command: str, where: str) -> None:
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.stack, self.command, self.where = stack, command, where
        self.identity = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.lease: dict[str, Any] | None = None
        self.lost = False
        self._stop = threading.Event()
        self._guard = threading.Lock()

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """The API's JSON answer; None for 404 and 409 (absent; someone else wrote first). Else one-line error."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from hybridorch.backends.kubewatch import explain_api_error

        try:
            resp = call(*args, _preload_content=False, _request_timeout=30, **kwargs)
        except ApiException as err:
            if err.status in (404, 409):
                return None
            if err.status == 403:   # who may not do what comes first, as for every other RBAC refusal
                raise BackendError(explain_api_error(err, f"{self.where}, {what}")) from None
            raise BackendError(f"{what}: {explain_api_error(err, self.where)}") from None
        except HTTPError as err:
            raise BackendError(f"{what}: {explain_api_error(err, self.where)}") from None
        data: dict[str, Any] = json.loads(resp.data or b"{}")
        return data

    def _read(self) -> dict[str, Any] | None:
        return self._call(f"reading the lock of stack {self.stack}", self.api.read_namespaced_lease,
                          lease_name(self.stack), LOCK_NAMESPACE)

    def _ensure_namespace(self) -> None:
        # read first: a user who may use the Leases there need not be allowed to create namespaces
        if self._call(f"reading namespace {LOCK_NAMESPACE}", self.core.read_namespace, LOCK_NAMESPACE) is not None:
            return
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": LOCK_NAMESPACE, "labels": {LABEL_MANAGED: MANAGED_BY}}}
        self._call(f"creating namespace {LOCK_NAMESPACE} for the stack locks", self.core.create_namespace, body)

    def try_take(self, seen: _Seen) -> tuple[bool, dict[str, Any] | None, LeaseState]:
        """One round: (taken, the Lease as read, what it meant). Taken when it was free or expired and our write
        won the round."""
        current = self._read()
        state = lease_state(current, time.time(), seen.unchanged_for(current))
        if state is LeaseState.HELD:
            return False, current, state
        body = lease_body(self.stack, self.identity, self.command, time.time(), current)
        if current is None:
            won = self._call(f"taking the lock of stack {self.stack}", self.api.create_namespaced_lease,
                             LOCK_NAMESPACE, body)
        else:
            won = self._call(f"taking the lock of stack {self.stack}", self.api.replace_namespaced_lease,
                             lease_name(self.stack), LOCK_NAMESPACE, body)
        if won is None:
            return False, current, state
        self.lease = won
        return True, current, state

    def acquire(self, wait: bool, on_wait: LockNotice | None) -> None:
        self._ensure_namespace()
        seen, told = _Seen(), False
        while True:
            taken, before, state = self.try_take(seen)
            if taken:
                if before is not None and state is LeaseState.EXPIRED and on_wait is not None:
                    on_wait(takeover_message(self.stack, lease_holder(before)))
                return
            if before is None or state is not LeaseState.HELD:
                continue   # lost the round to another run's write: read the winner's Lease
            if not wait:
                raise LockHeld(self.stack, lease_holder(before))
            if on_wait is not None and not told:
                on_wait(waiting_message(self.stack, lease_holder(before)))
                told = True
            version = before["metadata"].get("resourceVersion")
            # until it changes (released, renewed, taken) or would expire: then try again
            proc.wait_until(lambda: (self._read() or {}).get("metadata", {}).get("resourceVersion") != version,
                            LEASE_SECONDS + 1, poll=POLL)

    def renew_until_released(self) -> None:
        """The background thread: renew every RENEW_EVERY seconds; a conflict means another run took it over."""
        while not self._stop.wait(RENEW_EVERY):
            with self._guard:
                if self.lease is None or self.lost:
                    return
                body = dict(self.lease)
                body["spec"] = {**body["spec"], "renewTime": micro_time(time.time())}
                try:
                    renewed = self._call(f"renewing the lock of stack {self.stack}", self.api.replace_namespaced_lease,
                                         lease_name(self.stack), LOCK_NAMESPACE, body)
                except BackendError:
                    continue   # the API server may be back by the next round; the Lease has 2 more to spare
                if renewed is None:
                    self.lost = True
                else:
                    self.lease = renewed

    def release(self) -> None:
        """Delete the Lease, only if it is still the one this run wrote (preconditions: uid, resourceVersion)."""
        self._stop.set()
        with self._guard:
            lease, self.lease = self.lease, None
        if lease is None or self.lost:
            return
        meta = lease["metadata"]
        self._call(f"releasing the lock of stack {self.stack}", self.api.delete_namespaced_lease,
                   lease_name(self.stack), LOCK_NAMESPACE,
                   body={"preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}})


@contextmanager
def stack_lease(api_client: Any, stack: str, *, command: str, where: str, wait: bool = True,
                on_wait: LockNotice | None = None) -> Iterator[None]:
    """Hold the stack's Lease for the `with` block (see Backend.lock)."""
    lock = LeaseLock(api_client, stack, command, where)
    lock.acquire(wait, on_wait)
    renewer = threading.Thread(target=lock.renew_until_released, name=f"lease-{stack}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        lock.release()
        renewer.join(timeout=5)
