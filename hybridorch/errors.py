"""The one exception hierarchy of hybridorch.

Every failure a user can cause or meet is a HybridorchError with an exit code; the CLI turns it into a
one-line message in exactly one place (cli.HybridorchGroup). Exit codes, kept apart (README, Commands):
0 ok, 1 findings or failed tests (only), 2 bad input or unusable output, 3 render, 4 runtime, 70 internal error
(a bug: any other exception), 130 interrupted, 141 stdout closed by its reader; a subclass may name its own
(the stack lock's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70      # EX_SOFTWARE (sysexits.h): never 1, which means "findings"
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away, as a shell reports it


class HybridorchError(Exception):
    """Root of every error the tool reports to a user. Exit 2 unless a subclass says otherwise: 1 is reserved
    for completed runs that found something (AuditFailed, TestFailure)."""

    exit_code = EXIT_BAD_INPUT

    def lines(self) -> list[str]:
        """The message as the lines printed to stderr (one line per problem)."""
        return [str(self)]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file: where it is and why."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


MAX_PROBLEM_LINES = 20  # per file: a file with thousands of problems must not flood the terminal


class SpecError(HybridorchError):
    """Invalid stack, policy, hosts or test-plan input; carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem, at most MAX_PROBLEM_LINES of each file, then `FILE: and N more problems`."""
        by_file: dict[str, list[Problem]] = {}
        for p in self.problems:
            by_file.setdefault(p.file, []).append(p)
        out: list[str] = []
        for file, problems in by_file.items():
            out += [str(p) for p in problems[:MAX_PROBLEM_LINES]]
            if len(problems) > MAX_PROBLEM_LINES:
                more = len(problems) - MAX_PROBLEM_LINES
                out.append(f"{file}: and {more} more problem{'s' if more > 1 else ''}")
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled whole (a forked render worker hands it back), not rebuilt from the joined message
        return (type(self), (self.problems,))


class PolicyError(HybridorchError):
    """A placement that contradicts a hard rule, or a policy that cannot be used."""

    exit_code = 2


class RenderError(HybridorchError):
    """A template failed or rendered output did not validate; nothing was written."""

    exit_code = 3


class BackendError(HybridorchError):
    """A runtime (Docker, QEMU, Kubernetes) refused, failed or is missing."""

    exit_code = 4


class OutputError(HybridorchError):
    """The result could not be written (--output to a full device or an unwritable path, a closed stdout)."""

    exit_code = EXIT_BAD_INPUT


class AuditFailed(HybridorchError):
    """An audit completed and found something at or above the --fail-on severity."""

    exit_code = EXIT_FINDINGS


class InputError(HybridorchError):
    """What a run needs and was pointed at is not there (a kubeconfig, an image on the cluster, an emulator for
    the plan's arch): one line, exit 2, raised before anything starts or after what started is removed."""

    exit_code = EXIT_BAD_INPUT


class TestFailure(HybridorchError):
    """A test run completed but some tests failed (soc-test)."""

    __test__ = False  # not a pytest class
    exit_code = 1
