"""The Docker SDK seen by the Docker backend and its helpers: connecting (lazily importing the SDK), and turning
the SDK's and the connection's errors into one-line BackendErrors that name what was being done."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from hybridorch.errors import BackendError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Sdk:
    """A connected client and the SDK's error classes (docker.errors)."""

    client: Any
    errors: Any

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Turn SDK and connection errors into one-line BackendErrors naming what was being done."""
        import requests

        try:
            yield
        except self.errors.APIError as err:
            raise BackendError(f"{what}: {explain(err)}") from err
        except self.errors.DockerException as err:
            raise BackendError(f"{what}: {err}") from err
        except requests.exceptions.RequestException as err:
            host = self.client.api.base_url
            raise BackendError(f"{what}: lost the Docker engine at {host} ({root_reason(err)})") from err


def connect(timeout: int) -> Sdk:
    """The engine DOCKER_HOST names (else the local socket), pinged: a clear error when it is missing or down."""
    try:
        import docker  # type: ignore[import-untyped]
        import docker.errors  # type: ignore[import-untyped]
    except ImportError as err:
        raise BackendError("the docker Python SDK is missing: pip install 'docker>=7.1'") from err
    host = os.environ.get("DOCKER_HOST", DEFAULT_SOCKET)
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as err:
        raise BackendError(engine_down_message(host, err)) from err
    except ValueError as err:   # the SDK parses DOCKER_HOST with urllib: "tcp://[::" is "Invalid IPv6 URL"
        raise BackendError(bad_host_message(host, err)) from err
    return Sdk(client, docker.errors)


def bad_host_message(host: str, err: BaseException) -> str:
    shown = host if len(host) <= 60 else host[:57] + "..."   # the user typed it: shown, but not at any length
    reason = " ".join(str(err).split())[:120]
    return (f"DOCKER_HOST={shown} is not a Docker engine address ({reason}): set it to unix:///PATH or "
            "tcp://HOST:PORT, or unset it for the local engine")


def explain(err: Any) -> str:
    text = str(getattr(err, "explanation", None) or err)
    return " ".join(text.split())


def root_reason(err: BaseException) -> str:
    """The innermost OS-level reason of a connection error (e.g. 'No such file or directory')."""
    seen: BaseException | None = err
    reason = str(err)
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, OSError) and arg.strerror:
                reason = arg.strerror
            inner = getattr(arg, "reason", None)
            if isinstance(inner, OSError) and inner.strerror:
                reason = inner.strerror
        seen = seen.__cause__ or seen.__context__
    return " ".join(reason.split())[:200]


def engine_down_message(host: str, err: BaseException) -> str:
    if host == DEFAULT_SOCKET and not shutil.which("dockerd") and not os.path.exists("/var/run/docker.sock"):
        return "Docker is not installed: apt-get install docker.io (or set DOCKER_HOST to a running engine)"
    return (f"Docker engine not reachable at {host} ({root_reason(err)}): start it (systemctl start docker, "
            "or e2e/setup.d/10-docker.sh) or point DOCKER_HOST at a running engine")
