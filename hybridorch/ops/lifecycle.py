"""`ps` and `gc`: everything hybridorch made, across stacks, found by its labels (Docker, Kubernetes) or state
records (local QEMU VMs), with age, owner and ttl; and removal of what outlived its ttl, data kept.

Targets are reached only through the engine interface (Backend.inventory and Backend.remove).
"""
from __future__ import annotations

import time

from hybridorch.backends.base import Backend, LockHeld, LockNotice, Managed, get_backend
from hybridorch.errors import BackendError
from hybridorch.core.durations import human_age
from hybridorch.core.text import table

__all__ = ["Managed", "TARGETS", "inventory", "gc", "ps_table"]   # Managed: the engine interface's record

TARGETS = ("local", "kubernetes", "all")
_FIELD_WORDS = {"started": "start time"}   # Managed.unreadable's names, in words


def _targets(target: str) -> tuple[str, ...]:
    if target not in TARGETS:
        raise BackendError(f"unknown target {target!r}: use {', '.join(TARGETS)}")
    return ("local", "kubernetes") if target == "all" else (target,)


def inventory(target: str = "local", *, context: str | None = None,
              skipped: list[str] | None = None) -> list[Managed]:
    """Everything hybridorch made on the target(s), whatever stack file it came from.

    With target "all", a side that cannot be reached (no Docker engine, no cluster configured) is left out and
    named in `skipped`; a single named target raises instead."""
    out: list[Managed] = []
    for t in _targets(target):
        try:
            out += _backend(t, context).inventory()
        except BackendError as err:
            if target != "all" or skipped is None:
                raise
            skipped.append(f"{t}: {err}")
    if skipped is not None:   # said once: the item is listed with "?" (and never expires when its age is unknown)
        skipped += [_unreadable(m) for m in out if m.unreadable]
    return sorted(out, key=lambda m: (m.target, m.stack, m.workload, m.name))


def _unreadable(m: Managed) -> str:
    fields = " and ".join(_FIELD_WORDS.get(f, f) for f in m.unreadable)
    kept = "; gc leaves it alone" if {"started", "ttl"} & set(m.unreadable) else ""
    return (f"{m.target}: reading the {fields} of {m.kind} {(m.namespace + '/') if m.namespace else ''}{m.name} of "
            f"stack {m.stack} (not readable as recorded: shown as ?{kept})")


def _backend(target: str, context: str | None) -> Backend:
    """The engine of one target from the registry; only a cluster takes a kubeconfig context."""
    return get_backend(target, **({"context": context} if context and target == "kubernetes" else {}))


def ps_table(items: list[Managed], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not items:
        return "nothing made by hybridorch"
    rows = [("TARGET", "STACK", "WORKLOAD", "KIND", "NAME", "RUNTIME", "AGE", "OWNER", "TTL")]
    for m in items:
        age = m.age(now)
        ttl = m.shown("ttl", m.ttl) + (" (expired)" if m.expired(now) else "")
        rows.append((m.target, m.stack, m.workload, m.kind, (f"{m.namespace}/" if m.namespace else "") + m.name,
                     str(m.runtime or "-"), m.shown("started", None if age is None else human_age(age)),
                     m.shown("owner", m.owner), ttl))
    return "\n".join(table(rows))   # labels and names come from what runs: escaped, one row per item


def gc(target: str = "local", *, dry_run: bool = False, context: str | None = None, now: float | None = None,
       skipped: list[str] | None = None, wait_lock: bool = True,
       on_lock_wait: LockNotice | None = None) -> tuple[list[Managed], list[str]]:
    """Remove what is past its ttl, only hybridorch's, keeping data as `down`/`delete` keep it.

    Each stack is removed from under its lock (Backend.lock), and only what is still there and expired once the
    lock is held (a run that held it may have replaced it). Without `wait_lock`, a stack another run holds is
    left alone and named in `skipped` (raised when there is no `skipped`).
    Returns the expired items and what was removed (nothing with dry_run)."""
    now = time.time() if now is None else now
    expired = [m for m in inventory(target, context=context, skipped=skipped) if m.expired(now)]
    if dry_run or not expired:
        return expired, []
    removed: list[str] = []
    for t in _targets(target):
        backend = _backend(t, context)
        for stack in sorted({m.stack for m in expired if m.target == t}):
            try:
                with backend.lock(stack, command="hybridorch gc", wait=wait_lock, on_wait=on_lock_wait):
                    still = {_key(m) for m in backend.inventory() if m.stack == stack and m.expired(now)}
                    mine = [m for m in expired if m.target == t and m.stack == stack and _key(m) in still]
                    # each target removes its own items, data kept (a cluster's claims are cut loose from owners)
                    removed += backend.remove(mine, keep_data=True).lines() if mine else []
            except LockHeld as err:
                if skipped is None:
                    raise
                skipped.append(f"{t}: {err}")
    return expired, removed


def _key(m: Managed) -> tuple[str, str, str, float | None]:
    """One made thing, by what names it and when it was made: a same-named successor is another thing."""
    return (str(m.kind), m.namespace, m.name, m.created)
