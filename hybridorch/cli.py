"""The command line: parse, call one library function, print. No logic lives here.

Every HybridorchError is turned into a message and an exit code in exactly one place (HybridorchGroup.invoke).
Backends are imported inside the commands that use them, so `--help` and `plan` start fast.
"""
from __future__ import annotations

import gc as collector
import math
import os
import re
import sys
from typing import Any

import click

from hybridorch import __version__
from hybridorch.core.text import json_text, printable
from hybridorch.errors import (EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, HybridorchError,
                               OutputError, SpecError)


# Click 8.2+ raises this for a group called with nothing; older versions print the help themselves
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class HybridorchGroup(click.Group):
    """The one place errors become messages and exit codes (errors.py lists them): a HybridorchError is its
    lines and its code, any other exception is a bug (one line, EXIT_INTERNAL), Click's usage errors are one
    line with exit 2. --debug adds the traceback and keeps the code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except HybridorchError as err:
            _traceback_if(ctx)
            for line in err.lines():
                _say(line if isinstance(err, SpecError) else f"error: {line}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            _say("error: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # the reader went away (`| head`): nothing to say, and not 1 (findings); what a shell shows for SIGPIPE
            _discard_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as err:
            _traceback_if(ctx)
            _say(f"internal error: {type(err).__name__}: {err} (a bug in hybridorch; --debug shows the traceback)",
                 err=True)
            ctx.exit(EXIT_INTERNAL)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        var = complete_var or f"_{(prog_name or 'hybridorch').replace('-', '_').upper()}_COMPLETE"
        if os.environ.get(var):
            self._complete(args, prog_name, complete_var, extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as err:   # no command at all: the help, as --help shows it
            click.echo(err.ctx.get_help(), err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.exceptions.ClickException as err:
            # one line instead of Click's usage block; a bad argument or option is bad input (2)
            where = f" (see '{err.ctx.command_path} --help')" if getattr(err, "ctx", None) else ""
            _say(f"error: {err.format_message()}{where}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.exceptions.Abort:
            _say("error: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


    def _complete(self, args: Any, prog_name: str | None, complete_var: str | None, extra: dict[str, Any]) -> None:
        """Shell completion, which the shell drives through COMP_WORDS/COMP_CWORD: a broken environment (no words,
        a word index that is no number) is one line and exit 2, not Click's traceback."""
        try:
            super().main(args, prog_name, complete_var, True, **extra)
        except (KeyError, ValueError, IndexError) as err:
            _say(f"error: shell completion: the shell's completion variables are missing or malformed "
                 f"({type(err).__name__})", err=True)
            sys.exit(EXIT_BAD_INPUT)


def _traceback_if(ctx: click.Context) -> None:
    """With --debug, the traceback of the exception being handled (the exit code stays the error's)."""
    if ctx.params.get("debug"):
        import traceback

        for line in traceback.format_exc().splitlines():   # messages in it may quote hostile names too
            _say(line, err=True)


def _say(line: str, *, err: bool = False) -> None:
    """Print one line of a result or an error with its control characters escaped: names come from files and
    from what runs, and must neither add a line nor reach the terminal as an escape sequence."""
    _show(printable(line), err=err)


def _show(text: str, *, err: bool = False, nl: bool = True) -> None:
    """Print formatted output whose values are already escaped (tables) or exact (JSON, YAML). A stdout that
    cannot be written (a full device) is an OutputError: one line, exit 2, no traceback."""
    try:
        click.echo(text, err=err, nl=nl)
    except BrokenPipeError:
        raise
    except OSError as exc:
        if err:
            return   # stderr itself failed: nowhere left to say it, the exit code still tells
        _discard_stdout()
        raise OutputError(f"cannot write the output: {exc.strerror or exc}") from None


def _discard_stdout() -> None:
    """What is still buffered would fail again when Python exits (a second message): point fd 1 at /dev/null."""
    import os

    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):   # a stdout without a descriptor (tests, embedding)
        pass


@click.group(cls=HybridorchGroup, context_settings={"auto_envvar_prefix": "HYBRIDORCH",
                                                    "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hybridorch")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors (env HYBRIDORCH_DEBUG).")
@click.option("--hosts", type=click.Path(), metavar="FILE",
              help="A `kind: Hosts` file describing the machines or cluster (replaces spec.hosts; env HYBRIDORCH_HOSTS).")
def cli(debug: bool, hosts: str | None) -> None:
    """Place every workload of a stack as a container, a sandboxed container, a VM or containers nested in a
    VM, explain each choice, and make it real on Kubernetes (kind, KubeVirt) or on this machine (Docker, QEMU)."""


def _hosts() -> str | None:
    """The global --hosts file, for the commands that plan."""
    hosts: str | None = click.get_current_context().find_root().params.get("hosts")
    return hosts


policy_option = click.option("--policy", metavar="NAME|PATH",
                             help="secure, balanced, efficient or a policy file (overrides spec.policy).")
# input files are plain paths: the loaders' one reader refuses directories, FIFOs and devices in one line (click's
# own check would print a usage message instead)
stack_file = click.argument("file", type=click.Path())


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@policy_option
def validate(files: tuple[str, ...], policy: str | None) -> None:
    """Check stack files: fields, types, quantities, names and placement contradictions."""
    from hybridorch.api import validate_files

    plans = validate_files(list(files), policy, _hosts())
    for plan in plans:
        _say(f"{plan.stack.file}: ok ({len(plan.placements)} workloads)")


class FiniteRange(click.FloatRange):
    """A float in a range that is a number: Click's FloatRange lets `nan` through (no comparison is true of it),
    and a NaN budget, PUE or timeout then reaches arithmetic and JSON output (`NaN` is not JSON)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{printable(value)} is not a finite number", param, ctx)
        return number


solver_budget_option = click.option(
    "--solver-budget", type=FiniteRange(0, 3600), default=2.0, show_default=True, metavar="SECONDS",
    help="Time packing may spend beyond best-fit decreasing (exact CP-SAT on small and medium stacks, "
         "improvement on large ones; deterministic work limits, about seconds); 0 disables the improvement. "
         "A stack that best-fit cannot place at all still gets the default budget before it is refused.")


@cli.command()
@stack_file
@policy_option
@click.option("--output", "-o", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@solver_budget_option
def plan(file: str, policy: str | None, output: str, solver_budget: float) -> None:
    """Decide and explain the runtime of every workload, and pack them onto hosts."""
    from hybridorch.api import plan_stack

    result = plan_stack(file, policy, _hosts(), solver_budget)
    if output == "json":
        _show(json_text(result.to_dict()))
    elif output == "yaml":
        import yaml

        _show(yaml.safe_dump(result.to_dict(), sort_keys=False), nl=False)
    else:
        from hybridorch.ops.report import plan_table

        _show(plan_table(result))
    for warning in result.warnings:
        _say(f"warning: {warning}", err=True)


@cli.command()
@stack_file
@click.option("--hosts", "hosts_file", type=click.Path(), metavar="HOSTS.yaml",
              help="A `kind: Hosts` file (same as the global --hosts).")
@policy_option
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png|FILE.svg",
              help="Also draw servers, energy and every host's CPU and memory (needs hybridorch[plot]).")
@click.option("--pue", type=FiniteRange(1, 5), help="Power usage effectiveness (default printed with the report).")
@click.option("--grid-intensity", type=FiniteRange(0, 5000), metavar="G_PER_KWH",
              help="Grid carbon intensity in gCO2/kWh (default printed with the report).")
@click.option("--idle-watts", type=click.IntRange(0, 100000), help="Idle power of hosts whose pool gives none.")
@click.option("--peak-watts", type=click.IntRange(1, 100000), help="Peak power of hosts whose pool gives none.")
@solver_budget_option
def capacity(file: str, hosts_file: str | None, policy: str | None, output: str, plot: str | None,
             pue: float | None, grid_intensity: float | None, idle_watts: int | None, peak_watts: int | None,
             solver_budget: float) -> None:
    """Servers, energy and CO2: one workload per server against the packed plan, and what did not fit."""
    from hybridorch import api
    from hybridorch.ops.capacity import Assumptions

    given = {"pue": pue, "grid_g_per_kwh": grid_intensity, "idle_watts": idle_watts, "peak_watts": peak_watts}
    assumptions = Assumptions(**{k: v for k, v in given.items() if v is not None})
    report = api.capacity(file, policy, hosts_file or _hosts(), solver_budget, assumptions, plot)
    if output == "json":
        _show(json_text(report.to_dict()))
    else:
        from hybridorch.ops.report import capacity_table

        _show(capacity_table(report))
    if plot:
        _say(f"wrote {plot}", err=True)


@cli.command()
@stack_file
@click.option("--target", type=click.Choice(["kubernetes", "local"]), default="kubernetes", show_default=True)
@click.option("--out", "out", default="-", show_default=True, metavar="DIR|-",
              help="Directory to write one file per workload (plus tenants and kustomization), or - for stdout.")
@click.option("--templates", type=click.Path(file_okay=False, exists=True),
              help="Directory of templates searched before the built-in ones.")
@click.option("--namespace-prefix", default="", help="Prefix for every tenant namespace.")
@policy_option
def render(file: str, target: str, out: str, templates: str | None, namespace_prefix: str,
           policy: str | None) -> None:
    """Render the plan to Kubernetes/KubeVirt manifests or local VM definitions, validated before writing."""
    from hybridorch import api

    rendered = api.render(file, target=target, templates=templates, policy=policy,
                          namespace_prefix=namespace_prefix, hosts=_hosts())
    if out == "-":
        _show(rendered.stream(), nl=False)
    else:
        for path in rendered.write(out):
            _say(f"wrote {path}", err=True)


target_option = click.option("--target", type=click.Choice(["local", "kubernetes"]), default="local",
                             show_default=True, help="This machine (Docker + QEMU) or a Kubernetes cluster.")
context_option = click.option("--context", help="kubeconfig context (target kubernetes).")
load_option = click.option("--load/--no-load", default=True, show_default=True,
                           help="Load the stack's locally built images into the nodes of a kind cluster (target "
                                "kubernetes); on other clusters, check that the nodes have them.")


def _events() -> Any:
    """The progress display of a command that changes what runs: the engine's events on stderr (rewritten in
    place on a terminal), so stdout keeps only the result (`-o json` stays parseable)."""
    import shutil
    import sys

    from hybridorch.progress import ProgressDisplay

    return ProgressDisplay(sys.stderr, columns=shutil.get_terminal_size().columns)


lock_option = click.option(
    "--wait-lock/--no-wait-lock", default=True, show_default=True,
    help="One run per stack at a time: wait while another run holds the stack's lock (saying so on stderr), or "
         "refuse at once in one line with exit code 75.")


def _lock_notice(line: str) -> None:
    """Why this run waits (another holds the stack's lock), or that it took over a killed run's lock."""
    _say(f"note: {line}", err=True)


result_output_option = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                                    show_default=True, help="The resulting status as a table or JSON (stdout).")


def _backend_options(context: str | None, namespace_prefix: str = "") -> dict[str, str]:
    """Backend options from the command line (and the global --hosts, which api pops before the backend)."""
    out = {}
    hosts = _hosts()
    if hosts:
        out["hosts"] = hosts
    if context:
        out["context"] = context
    if namespace_prefix:
        out["namespace_prefix"] = namespace_prefix
    return out


def _print_status(statuses: list, output: str) -> None:
    if output == "json":
        _show(json_text([s.to_dict() for s in statuses]))
        return
    from hybridorch.ops.report import status_table

    _show(status_table(statuses))


@cli.command()
@stack_file
@target_option
@context_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every workload is ready.")
@click.option("--timeout", type=FiniteRange(0, 86400), default=300, show_default=True,
              help="Seconds to wait for readiness.")
@click.option("--templates", type=click.Path(file_okay=False, exists=True))
@policy_option
@load_option
@lock_option
@result_output_option
def up(file: str, target: str, context: str | None, wait: bool, timeout: float, templates: str | None,
       policy: str | None, load: bool, wait_lock: bool, output: str) -> None:
    """Run the stack: containers in Docker and VMs in QEMU (local), or apply it to a cluster (kubernetes)."""
    from hybridorch import api

    extra = {"load": load} if target == "kubernetes" else {}
    _print_status(api.up(file, target, wait=wait, timeout=timeout, policy=policy, templates=templates,
                         events=_events(), wait_lock=wait_lock, on_lock_wait=_lock_notice,
                         **_backend_options(context), **extra), output)


@cli.command()
@stack_file
@context_option
@click.option("--namespace-prefix", default="", help="Prefix for every tenant namespace.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=FiniteRange(0, 86400), default=300, show_default=True)
@click.option("--templates", type=click.Path(file_okay=False, exists=True))
@policy_option
@load_option
@lock_option
@result_output_option
def apply(file: str, context: str | None, namespace_prefix: str, wait: bool, timeout: float,
          templates: str | None, policy: str | None, load: bool, wait_lock: bool, output: str) -> None:
    """Render, load local images into kind nodes, dry-run on the server, then kubectl apply --server-side, prune
    what left the stack and watch until it is ready (fails fast with a pod's own reason)."""
    from hybridorch import api

    _print_status(api.apply(file, wait=wait, timeout=timeout, policy=policy, templates=templates, load=load,
                            events=_events(), wait_lock=wait_lock, on_lock_wait=_lock_notice,
                            **_backend_options(context, namespace_prefix)), output)


@cli.command()
@stack_file
@target_option
@context_option
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@policy_option
def status(file: str, target: str, context: str | None, output: str, policy: str | None) -> None:
    """Name, runtime, state, ports, accelerator (kvm/tcg) and uptime of every workload."""
    from hybridorch import api

    _print_status(api.status(file, target, policy=policy, **_backend_options(context)), output)


@cli.command()
@stack_file
@click.argument("workload")
@target_option
@context_option
@click.option("--tail", type=click.IntRange(0), help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
def logs(file: str, workload: str, target: str, context: str | None, tail: int | None, follow: bool) -> None:
    """Container logs, or a VM's serial console."""
    from hybridorch import api

    for line in api.logs(file, workload, target, tail=tail, follow=follow, **_backend_options(context)):
        _show(line)   # the workload's own output, as `docker logs` shows it (colours included)


delete_data_option = click.option("--delete-data", is_flag=True,
                                  help="Also remove the stack's data (volumes, claims, DataVolumes, VM disks).")


def _print_removal(result: Any, verb: str, again: str) -> None:
    """What was removed, then what was kept and the command that removes each."""
    for item in result.removed:
        _say(f"{verb} {item}")
    for kept in result.kept:
        _say(str(kept))
    if result.data_kept:
        _say(f"data kept: `{again} --delete-data` removes it too")
    if not result.removed and not result.kept:
        _say("nothing to remove")


@cli.command()
@stack_file
@target_option
@context_option
@delete_data_option
@policy_option
@lock_option
def down(file: str, target: str, context: str | None, delete_data: bool, policy: str | None,
         wait_lock: bool) -> None:
    """Remove every container, network, VM and file the tool created for the stack, and nothing else.
    Data (volumes, VM disks) is kept unless --delete-data."""
    from hybridorch import api

    result = api.down(file, target, delete_data=delete_data, policy=policy, events=_events(),
                      wait_lock=wait_lock, on_lock_wait=_lock_notice, **_backend_options(context))
    _print_removal(result, "removed", f"hybridorch down {file}" + (f" --target {target}" if target != "local" else ""))


@cli.command()
@stack_file
@context_option
@click.option("--namespace-prefix", default="", help="Prefix for every tenant namespace.")
@delete_data_option
@policy_option
@lock_option
def delete(file: str, context: str | None, namespace_prefix: str, delete_data: bool, policy: str | None,
           wait_lock: bool) -> None:
    """Delete the stack's objects from the cluster (only objects carrying its labels). A namespace holding
    objects hybridorch did not make is kept; claims and DataVolumes are kept unless --delete-data."""
    from hybridorch import api

    result = api.delete(file, delete_data=delete_data, policy=policy, events=_events(), wait_lock=wait_lock,
                        on_lock_wait=_lock_notice, **_backend_options(context, namespace_prefix))
    _print_removal(result, "deleted", f"hybridorch delete {file}" + (f" --context {context}" if context else "")
                   + (f" --namespace-prefix {namespace_prefix}" if namespace_prefix else ""))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())   # the one reader refuses a directory
@click.option("--live", is_flag=True, help="Also inspect what runs for each stack file (containers, VMs, objects).")
@target_option
@context_option
@click.option("--namespace-prefix", default="", help="Prefix of the tenant namespaces (--live --target kubernetes).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif"]), default="table", show_default=True)
@click.option("--output", "out", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write the report to FILE instead of stdout.")
@click.option("--fail-on", type=click.Choice(["low", "medium", "high", "never"]), default="high", show_default=True,
              help="Exit 1 when a finding at or above this severity exists.")
@click.option("--max-image-age", metavar="DURATION", help="Flag guest/container images older than this (e.g. 30d).")
@click.option("--templates", type=click.Path(file_okay=False, exists=True),
              help="Audit what these user templates render (searched before the built-in ones).")
@policy_option
def audit(files: tuple[str, ...], live: bool, target: str, context: str | None, namespace_prefix: str, fmt: str,
          out: str | None, fail_on: str, max_image_age: str | None, templates: str | None,
          policy: str | None) -> None:
    """Check stacks, rendered manifests, libvirt domains and cloud-init for virtualization risks (rules HYB001...)."""
    from hybridorch import api

    report = api.audit(list(files), policy=policy, hosts=_hosts(), templates=templates, live=live, target=target,
                       context=context, namespace_prefix=namespace_prefix, max_image_age=max_image_age,
                       fmt=fmt, fail_on=fail_on)
    if out is not None and out not in ("-", "/dev/stdout"):
        report.write(out, files)   # OutputError (one line, exit 2): a full device, an unwritable path, an input
        _say(f"wrote {out} ({len(report.findings)} findings)", err=True)
    else:
        _show(report.text)
    report.check()   # AuditFailed (exit 1) when a finding reaches --fail-on


lifecycle_target = click.option("--target", type=click.Choice(["local", "kubernetes", "all"]), default="local",
                                show_default=True, help="This machine, the cluster, or both.")


@cli.command()
@lifecycle_target
@context_option
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
def ps(target: str, context: str | None, output: str) -> None:
    """Everything hybridorch made, across stacks: stack, workload, runtime, age, owner and TTL."""
    import time

    from hybridorch import api
    from hybridorch.ops import lifecycle

    skipped: list[str] = []
    items, now = api.ps(target, context=context, skipped=skipped), time.time()
    if output == "json":
        _show(json_text([m.to_dict(now) for m in items]))
    else:
        _show(lifecycle.ps_table(items, now))
    for line in skipped:
        _say(f"warning: skipped {line}", err=True)


@cli.command()
@lifecycle_target
@context_option
@click.option("--dry-run", is_flag=True, help="Only list what is past its TTL.")
@click.option("--wait-lock/--no-wait-lock", default=True, show_default=True,
              help="Wait for the lock of each stack another run holds, or leave that stack alone (a warning).")
def gc(target: str, context: str | None, dry_run: bool, wait_lock: bool) -> None:
    """Remove what hybridorch made that is past its TTL (only hybridorch's objects; data is kept)."""
    from hybridorch import api

    skipped: list[str] = []
    expired, removed = api.gc(target, dry_run=dry_run, context=context, skipped=skipped, events=_events(),
                              wait_lock=wait_lock, on_lock_wait=_lock_notice)
    for line in skipped:
        _say(f"warning: skipped {line}", err=True)
    for m in expired:
        where = f"{m.namespace}/" if m.namespace else ""
        _say(f"{'would remove' if dry_run else 'expired'} {m.kind} {where}{m.name} (stack {m.stack}, ttl {m.ttl})")
    for item in removed:
        _say(item if item.startswith("kept ") else f"removed {item}")
    if not expired:
        _say("nothing past its TTL")


@cli.command()
@click.argument("action", type=click.Choice(["create", "list", "restore", "prune"]))
@stack_file
@click.argument("workload")
@click.argument("name", required=False)
@target_option
@context_option
@click.option("--namespace-prefix", default="", help="Prefix for every tenant namespace.")
@policy_option
@click.option("--dry-run", is_flag=True, help="prune: only list what would be removed.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@lock_option
def snapshot(action: str, file: str, workload: str, name: str | None, target: str, context: str | None,
             namespace_prefix: str, policy: str | None, dry_run: bool, output: str, wait_lock: bool) -> None:
    """Snapshots of a VM workload: create [PREFIX], list, restore [NAME] (default newest), prune [NAME] (the
    workload's snapshots: {retain, maxAge}, or exactly NAME)."""
    import time

    from hybridorch import api
    from hybridorch.ops.snapshots import snapshot_table

    where = {"target": target, "policy": policy, "context": context, "namespace_prefix": namespace_prefix}
    warnings: list[str] = []
    locking = {"wait_lock": wait_lock, "on_lock_wait": _lock_notice}   # list only reads: it takes no lock
    if action == "create":
        snaps = api.snapshot_create(file, workload, name, **where, **locking)
    elif action == "list":
        if name is not None:
            raise click.UsageError("list takes no NAME")
        snaps = api.snapshot_list(file, workload, **where)
    elif action == "restore":
        snaps, warnings = api.snapshot_restore(file, workload, name, **where, **locking)
    else:
        snaps = api.snapshot_prune(file, workload, name, dry_run=dry_run, **where, **locking)
    now = time.time()
    if output == "json":
        _show(json_text([s.to_dict(now) for s in snaps]))
    else:
        verb = {"create": "created", "restore": "restored", "prune": "would remove" if dry_run else "removed"}
        if action == "list":
            _show(snapshot_table(snaps, now))
        for s in snaps if action != "list" else []:
            _say(f"{verb[action]} snapshot {s.name} of {s.vm}")
        if action == "prune" and not snaps:
            _say("nothing to prune")
    for line in warnings:
        _say(line, err=True)


def _positive_duration(value: str) -> str:
    from hybridorch.core.durations import POSITIVE, POSITIVE_WHAT, is_duration

    # it is also a label value (63 characters) and a Job's ttlSecondsAfterFinished: the century cap applies
    if len(value) > 63 or not re.fullmatch(POSITIVE, value) or not is_duration(value):
        raise click.BadParameter(f"{printable(value)[:70]!r} is not {POSITIVE_WHAT}, of at most 100 years")
    return value


def _dns_label(value: str) -> str:
    from hybridorch.core.schema import DNS_LABEL

    if not re.fullmatch(DNS_LABEL, value):
        raise click.BadParameter(f"{value!r} is not a namespace name (lowercase letters, digits and '-', at most 63)")
    return value


@cli.command("soc-test")
@click.argument("plans", nargs=-1, required=True, type=click.Path())
@click.option("--junit", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Also write the results as JUnit XML.")
@click.option("--target", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Boot the boards on this machine, or as Kubernetes Jobs on a cluster (one pod per board).")
@click.option("-j", "--jobs", "--parallel", "jobs", type=click.IntRange(1, 64), default=None,
              help="Boards at a time, each in its own VM [default: 1 locally, every board on a cluster].")
@context_option
@click.option("--namespace", default="hybridorch-soc", show_default=True, callback=lambda _c, _p, v: _dns_label(v),
              help="Namespace of the Jobs (target kubernetes); made when missing.")
@click.option("--ttl", default="1h", show_default=True, callback=lambda _c, _p, v: _positive_duration(v),
              help="How long finished Jobs stay (ttlSecondsAfterFinished, and the ttl label `gc` reads).")
@load_option
def soc_test(plans: tuple[str, ...], junit: str | None, target: str, jobs: int | None, context: str | None,
             namespace: str, ttl: str, load: bool) -> None:
    """Boot an emulated board per `kind: SocTest` plan, run its containers inside with runc, report the results."""
    from hybridorch.ops import soc

    options = {"context": context, "load": load, "soc_namespace": namespace} if target == "kubernetes" else {}
    report = soc.run_soc_tests(list(plans), junit, jobs, target=target, events=_events(), ttl=ttl, **options)
    _show(soc.format_report(report))
    soc.check_report(report)  # TestFailure (exit 1) unless every test passed


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the stack file (for editor autocompletion)."""
    from hybridorch.core.spec import stack_json_schema

    _show(json_text(stack_json_schema()))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(hybridorch completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    _show(cls(cli, {}, "hybridorch", "_HYBRIDORCH_COMPLETE").source())


def main() -> None:
    # one short-lived run that builds many small objects (10,000 workloads: a million dicts and lists) and makes
    # few cycles: the collector's default 700-allocation trigger cost a tenth of a large render or audit
    collector.set_threshold(_GC_THRESHOLD, 20, 20)
    cli(prog_name="hybridorch")


_GC_THRESHOLD = 100_000


if __name__ == "__main__":  # pragma: no cover
    main()
