"""The plan: every workload's placement plus the host packing, built purely from a Stack and a Profile."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hybridorch.errors import PolicyError, Problem, SpecError
from hybridorch.core.packing import DEFAULT_SOLVER_BUDGET, Packing, pack
from hybridorch.core.policy import HostFacts, Placement, Profile, place_workload
from hybridorch.core.policyfile import resolve_policy
from hybridorch.core.runtime import Runtime
from hybridorch.core.spec import Stack, load_hosts, load_stack, placement_problems, problem


@dataclass(frozen=True)
class Plan:
    stack: Stack
    profile: Profile
    placements: tuple[Placement, ...]
    packing: Packing

    def placement(self, name: str) -> Placement:
        for p in self.placements:
            if p.name == name:
                return p
        raise KeyError(name)

    def has_runtime(self, runtime: Runtime) -> bool:
        return any(p.runtime is runtime for p in self.placements)

    @property
    def warnings(self) -> list[str]:
        return [w for p in self.placements for w in p.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {"stack": self.stack.name, "file": self.stack.file, "policy": self.profile.name,
                "placements": [p.to_dict() for p in self.placements], "packing": self.packing.to_dict(),
                "warnings": self.warnings}


def build_plan(stack: Stack, profile: Profile, solver_budget: float = DEFAULT_SOLVER_BUDGET,
               strict: bool = True) -> Plan:
    """Place every workload, then pack. Contradictions are reported for all workloads at once, at their lines.

    solver_budget: seconds the packing may spend beyond best-fit decreasing (0: none). strict: a replica that
    gets no host is an error; otherwise it is listed in packing.unplaced (the capacity report shows it)."""
    placements: list[Placement] = []
    problems: list[Problem] = []
    hosts = HostFacts(tuple(stack.hosts))  # indexed once for every workload
    for w in stack.workloads:
        try:
            placements.append(place_workload(w, profile, hosts))
        except PolicyError as err:
            fld = "runtime" if w.runtime is not None else ""
            problems.append(problem(stack, w, fld, str(err)))
    if problems:
        raise SpecError(problems)
    try:
        packing = pack(placements, stack.hosts, profile, solver_budget=solver_budget, strict=strict)
    except PolicyError as err:
        raise SpecError([Problem(stack.file, 0, "spec.hosts", str(err))]) from err
    return Plan(stack, profile, tuple(placements), packing)


def plan_stack(path: str, policy: str | None = None, hosts: str | None = None,
               solver_budget: float = DEFAULT_SOLVER_BUDGET, strict: bool = True) -> Plan:
    """Load a stack file and decide every workload's runtime and host.

    `hosts` is a `kind: Hosts` file describing the machines or cluster; it replaces the stack's spec.hosts.
    `solver_budget`: seconds packing may spend improving on best-fit decreasing (0: none)."""
    stack = load_stack(path)
    if hosts:
        stack = replace(stack, hosts=load_hosts(hosts))
    plan = build_plan(stack, resolve_policy(stack, policy), solver_budget, strict)
    problems = placement_problems(stack, {p.name: p.runtime for p in plan.placements})
    if problems:
        raise SpecError(problems)
    return plan
