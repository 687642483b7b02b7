"""The one exception hierarchy of hybridorch.

Every failure a user can cause or meet is a HybridorchError with an exit code; the CLI turns it into a
one-line message in exactly one place (cli.main).
"""
from __future__ import annotations

from dataclasses import dataclass


class HybridorchError(Exception):
    """Root of every error the tool reports to a user."""

    exit_code = 1

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


class SpecError(HybridorchError):
    """Invalid stack, policy, hosts or test-plan input; carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class PolicyError(HybridorchError):
    """A placement that contradicts a hard rule, or a policy that cannot be used."""

    exit_code = 2


class RenderError(HybridorchError):
    """A template failed or rendered output did not validate; nothing was written."""

    exit_code = 3


class BackendError(HybridorchError):
    """A runtime (Docker, QEMU, Kubernetes) refused, failed or is missing."""

    exit_code = 4


class AuditFailed(HybridorchError):
    """An audit completed and found something at or above the --fail-on severity."""

    exit_code = 1


class TestFailure(HybridorchError):
    """A test run completed but some tests failed (soc-test)."""

    __test__ = False  # not a pytest class
    exit_code = 1
