"""hybridorch: place every workload of a stack as a container, sandboxed container, VM or nested containers."""

__version__ = "0.1.0"
