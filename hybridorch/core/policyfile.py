"""Policy files (`kind: Policy`) and how a stack picks its profile: a built-in name, `--policy`, or a file beside
the stack. Reads only the file it is given, through the one safe reader."""
from __future__ import annotations

import os
from typing import Any

from hybridorch.core.durations import POSITIVE as POSITIVE_DURATION
from hybridorch.core.durations import POSITIVE_WHAT, duration_problem
from hybridorch.core.policy import PROFILES, SANDBOX_CLASSES, Overhead, Profile, make_profile
from hybridorch.core.runtime import LocalSandbox, Named, Runtime, SandboxClass
from hybridorch.core.safeload import path_inside
from hybridorch.core.schema import (DNS_LABEL, DNS_LABEL_WHAT, Document, Field, Obj, Quantity, Scalar, check_document,
                                    parse_quantity)
from hybridorch.core.spec import API_VERSION, Stack
from hybridorch.errors import PolicyError, Problem, SpecError


def _values(*members: Named) -> tuple[str, ...]:
    return tuple(m.value for m in members)


# the policy file's option values, turned into their enums here at the edge
_ENUMS: dict[str, type[Named]] = {"untrustedRuntime": Runtime, "internalRuntime": Runtime,
                                  "localSandbox": LocalSandbox, "sandboxRuntimeClass": SandboxClass}

_OVERHEAD = Obj({"cpu": Field(Quantity("cpu"), required=True), "memory": Field(Quantity("memory"), required=True)})

POLICY_FILE = Obj({
    "apiVersion": Field(Scalar(str, enum=(API_VERSION,)), required=True),
    "kind": Field(Scalar(str, enum=("Policy",)), required=True),
    "metadata": Field(Obj({"name": Field(Scalar(str, pattern=DNS_LABEL, what=DNS_LABEL_WHAT), required=True)}),
                      required=True),
    "spec": Field(Obj({
        "base": Field(Scalar(str, enum=tuple(PROFILES)), default="balanced"),
        "untrustedRuntime": Field(Scalar(str, enum=_values(Runtime.SANDBOXED, Runtime.VM))),
        "internalRuntime": Field(Scalar(str, enum=_values(Runtime.CONTAINER, Runtime.SANDBOXED))),
        "privilegedTrustedAsContainer": Field(Scalar(bool)),
        "separateTenants": Field(Scalar(bool)),
        "spreadReplicas": Field(Scalar(bool)),
        "headroomPercent": Field(Scalar(int, minimum=0, maximum=90)),
        "emulationCpuFactor": Field(Scalar(int, minimum=1, maximum=100)),
        "maxVmCpus": Field(Scalar(int, minimum=1, maximum=1024), doc="Per-VM CPU ceiling (audit rule HYB002)."),
        # short numbers and at most a century keep parse_duration's sums small (5,000 digits once crashed the
        # audit), and zero is refused: a maximum age of 0s would flag every snapshot the moment it is taken
        "maxSnapshotAge": Field(Scalar(str, pattern=r"(?=.{1,63}$)" + POSITIVE_DURATION, what=POSITIVE_WHAT,
                                       validate=duration_problem),
                                doc="Longest snapshot retention the audit accepts (rule HYB015)."),
        "overheads": Field(Obj({"sandboxed": Field(_OVERHEAD), "vm": Field(_OVERHEAD)})),
        "localSandbox": Field(Scalar(str, enum=_values(*LocalSandbox)),
                              doc="Where a sandboxed workload runs on the local target: auto (Docker's gVisor/Kata "
                                  "runtime, else its own VM), runtime, vm."),
        "sandboxRuntimeClass": Field(Scalar(str, enum=SANDBOX_CLASSES),
                                     doc="What a cluster runs sandboxed pods in: kata (RuntimeClass hybridorch-kata, "
                                         "handler kata, nodes with KVM) or gvisor (hybridorch-gvisor, handler runsc)."),
    }), required=True),
}, description="A hybridorch placement policy: a built-in profile with fields overridden.")

_POLICY_KEYS = {"untrustedRuntime": "untrusted_runtime", "internalRuntime": "internal_runtime",
                "privilegedTrustedAsContainer": "trusted_privileged_container", "separateTenants": "separate_tenants",
                "spreadReplicas": "spread_replicas", "headroomPercent": "headroom_percent",
                "emulationCpuFactor": "emulation_cpu_factor", "maxVmCpus": "max_vm_cpus",
                "maxSnapshotAge": "max_snapshot_age", "localSandbox": "local_sandbox",
                "sandboxRuntimeClass": "sandbox_runtime_class"}


def _overhead(v: dict[str, str]) -> Overhead:
    cpu, mem = parse_quantity(v["cpu"]), parse_quantity(v["memory"])
    assert cpu is not None and mem is not None
    return Overhead(int(cpu * 1000), int(mem))


def load_policy(path: str) -> Profile:
    """A user policy file (kind: Policy) turned into a Profile."""
    doc: Document = check_document(path, POLICY_FILE)
    spec = doc.values["spec"]
    overrides: dict[str, Any] = {_POLICY_KEYS[k]: _ENUMS[k](v) if k in _ENUMS else v
                                 for k, v in spec.items() if k in _POLICY_KEYS and v is not None}
    overheads = spec.get("overheads") or {}
    if overheads.get("sandboxed"):
        overrides["sandbox_overhead"] = _overhead(overheads["sandboxed"])
    if overheads.get("vm"):
        overrides["vm_overhead"] = _overhead(overheads["vm"])
    overrides["name"] = doc.values["metadata"]["name"]
    return make_profile(spec["base"], overrides)


def resolve_policy(stack: Stack, override: str | None = None) -> Profile:
    """The profile a stack uses: --policy wins over spec.policy; a name is built in, anything else a file path.

    A policy path in a stack file is relative to the stack file and must stay in its directory: a stack file
    must not make us read files beside it. The user can still name any file with --policy."""
    if override is not None and not override:
        raise SpecError([Problem("--policy", 0, "", f"is empty: name a policy ({', '.join(PROFILES)}) or a file")])
    ref = override or stack.policy
    if ref in PROFILES:
        return PROFILES[ref]
    path = ref
    if not override:
        inside = path_inside(stack.file, ref)
        if inside is None:
            raise SpecError([Problem(stack.file, stack.policy_line, "spec.policy",
                                     "the policy file is outside the stack's directory (an absolute path, '..' "
                                     "or a symlink out of it): keep it beside the stack, or pass --policy")])
        path = inside
    if not os.path.exists(path):
        if override:  # typed on the command line: quoting it back discloses nothing
            raise PolicyError(f"policy {ref!r} is neither {', '.join(PROFILES)} nor an existing file")
        raise SpecError([Problem(stack.file, stack.policy_line, "spec.policy",
                                 f"neither a built-in policy ({', '.join(PROFILES)}) nor an existing file beside "
                                 "the stack")])
    return load_policy(path)
