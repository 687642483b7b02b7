"""The kubeconfig files kubectl would read, checked through the safe reader (core.safeload) before kubectl or the
client reads them: a FIFO, a device, a huge file, an alias bomb or a file that is no kubeconfig is one line naming
the file, quoting nothing of it (kubectl's own messages quote the file, and a FIFO makes it wait forever).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import yaml

from hybridorch.backends.kube_api import NO_CLUSTER
from hybridorch.core.safeload import compose_yaml, read_input
from hybridorch.errors import BackendError, InputError, Problem, SpecError

# a kubeconfig is a few KB (a few hundred clusters with embedded certificates stay far below); kubectl reads the
# whole file into memory however large, so a disk image named by mistake is refused here
MAX_KUBECONFIG_BYTES = 4 * 2**20
# a kubeconfig nests about 7 levels (users[].user.exec.env[].name); extensions may add a few
MAX_DEPTH = 32
ALIAS_FLOOR = 10_000
# the named lists of a kubeconfig and the key of each entry's body
NAMED_LISTS = {"clusters": "cluster", "contexts": "context", "users": "user"}
STRING_FIELDS = ("apiVersion", "kind", "current-context")
_STR, _NULL = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null"
_KINDS = {"str": "a string", "int": "a number", "float": "a number", "bool": "true/false", "null": "null",
          "timestamp": "a timestamp", "binary": "binary data"}


@dataclass(frozen=True)
class KubeconfigFile:
    """One file kubectl would read: its path, where the name came from, and its stat (None: stat failed)."""

    path: str
    source: str
    signature: tuple[int, ...] | None


def kubeconfig_files(explicit: str | None = None) -> list[KubeconfigFile]:
    """The files kubectl reads, in its order: `explicit` (its --kubeconfig), else each non-empty entry of KUBECONFIG
    that exists (kubectl skips missing ones), else ~/.kube/config if it exists. An explicit path that does not exist
    is kubectl's error too: the usual "no cluster configured" line."""
    if explicit:
        found = _stat(explicit, "kubeconfig given to the backend")
        if found is None:
            raise BackendError(NO_CLUSTER)
        return [found]
    listed = os.environ.get("KUBECONFIG", "")
    if listed:   # kubectl: a set KUBECONFIG replaces the default file, even when none of its entries exists
        paths = list(dict.fromkeys(p for p in listed.split(os.pathsep) if p))
        return [f for f in (_stat(p, "kubeconfig from KUBECONFIG") for p in paths) if f is not None]
    default = _stat(os.path.join(os.path.expanduser("~"), ".kube", "config"), "default kubeconfig")
    return [default] if default is not None else []


def _stat(path: str, source: str) -> KubeconfigFile | None:
    """None when the file does not exist (ENOENT only, as kubectl's os.IsNotExist); any other failure (a symlink
    loop, no permission) is kept for the check to report."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return KubeconfigFile(path, source, None)
    return KubeconfigFile(path, source, (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


# what passed, by the files' paths and stats: a backend runs kubectl dozens of times, the files are read once
_PASSED: set[tuple[KubeconfigFile, ...]] = set()


def check_kubeconfig(explicit: str | None = None) -> None:
    """Raise InputError (exit 2, one line) when a kubeconfig kubectl would read is unreadable or not a kubeconfig;
    BackendError when an explicit path does not exist. A verdict is kept until a file's stat changes."""
    files = tuple(kubeconfig_files(explicit))
    if files in _PASSED:
        return
    for f in files:
        check_file(f)
    if len(_PASSED) > 64:   # a long-lived library user pointing at ever-new files
        _PASSED.clear()
    _PASSED.add(files)


def check_file(f: KubeconfigFile) -> None:
    """One file: a regular file of at most MAX_KUBECONFIG_BYTES, one YAML document within the limits, the shape of
    a kubeconfig's top level."""
    try:
        if f.signature is not None and stat.S_ISREG(f.signature[0]) and f.signature[3] > MAX_KUBECONFIG_BYTES:
            raise _too_large(f.path)
        text = read_input(f.path, "a kubeconfig")
        if len(text) > MAX_KUBECONFIG_BYTES:   # it grew after the stat
            raise _too_large(f.path)
        root = compose_yaml(text, f.path, max_depth=MAX_DEPTH, alias_floor=ALIAS_FLOOR)
        problem = shape_problem(root, f.path) or referenced_file_problem(root, f.path)
    except SpecError as err:
        problem = err.problems[0]   # safeload raises one problem per file
    if problem is not None:
        raise InputError(f"{problem} ({f.source})")


def _too_large(path: str) -> SpecError:
    return SpecError([Problem(path, 0, "", f"file is larger than the {MAX_KUBECONFIG_BYTES // 2**20} MiB limit of a "
                                           "kubeconfig")])


def shape_problem(root: yaml.Node | None, path: str) -> Problem | None:
    """The first thing wrong with a kubeconfig's top level (a mapping; clusters, contexts and users lists of
    mappings with a string name; current-context, apiVersion and kind strings), or None. null stands for absent,
    as kubectl writes `clusters: null` for an empty list."""
    if root is None or root.tag == _NULL:
        return None
    if not isinstance(root, yaml.MappingNode):
        return Problem(path, _line(root), "", f"a kubeconfig is a mapping (apiVersion, clusters, contexts, users), "
                                              f"not {_kind(root)}")
    for key, value in root.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if value.tag == _NULL:
            continue
        if name in STRING_FIELDS and value.tag != _STR:
            return Problem(path, _line(value), name, f"must be a string, not {_kind(value)}")
        if name in NAMED_LISTS:
            problem = _named_list(value, path, name, NAMED_LISTS[name])
            if problem is not None:
                return problem
    return None


def _named_list(node: yaml.Node, path: str, field: str, body: str) -> Problem | None:
    if not isinstance(node, yaml.SequenceNode):
        return Problem(path, _line(node), field, f"must be a list of mappings with a name, not {_kind(node)}")
    for i, entry in enumerate(node.value):
        where = f"{field}[{i}]"
        if not isinstance(entry, yaml.MappingNode):
            return Problem(path, _line(entry), where, f"must be a mapping with a name, not {_kind(entry)}")
        keys = {k.value: v for k, v in entry.value if isinstance(k, yaml.ScalarNode)}
        if "name" not in keys:
            return Problem(path, _line(entry), where, "has no name")
        if keys["name"].tag != _STR:
            return Problem(path, _line(keys["name"]), f"{where}.name", f"must be a string, not {_kind(keys['name'])}")
        inner = keys.get(body)
        if inner is not None and inner.tag != _NULL and not isinstance(inner, yaml.MappingNode):
            return Problem(path, _line(inner), f"{where}.{body}", f"must be a mapping, not {_kind(inner)}")
    return None


# files a kubeconfig names, which kubectl and the client read too (relative to the kubeconfig's directory)
FILE_FIELDS = {"cluster": ("certificate-authority",), "user": ("client-certificate", "client-key", "tokenFile")}


def referenced_file_problem(root: yaml.Node | None, path: str) -> Problem | None:
    """A certificate, key or token file the kubeconfig names that exists but is no regular file (a FIFO would make
    kubectl wait forever) or is larger than a kubeconfig may be; a missing one is kubectl's to report."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, entries in root.value:
        body = NAMED_LISTS.get(key.value) if isinstance(key, yaml.ScalarNode) else None
        if body not in FILE_FIELDS or not isinstance(entries, yaml.SequenceNode):
            continue
        for i, entry in enumerate(entries.value):
            inner = next((v for k, v in entry.value if k.value == body and isinstance(v, yaml.MappingNode)), None)
            for k, v in inner.value if inner is not None else ():
                if k.value in FILE_FIELDS[body] and v.tag == _STR and v.value:
                    problem = _file_problem(os.path.join(os.path.dirname(path), os.path.expanduser(v.value)))
                    if problem:
                        return Problem(path, _line(v), f"{key.value}[{i}].{body}.{k.value}", problem)
    return None


def _file_problem(named: str) -> str | None:
    try:
        st = os.stat(named)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return "names a file that is not a regular file (a FIFO, a device or a directory)"
    if st.st_size > MAX_KUBECONFIG_BYTES:
        return f"names a file larger than {MAX_KUBECONFIG_BYTES // 2**20} MiB"
    return None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: yaml.Node) -> str:
    """What a node is, in words; never its value (the file may hold secrets)."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return _KINDS.get(str(node.tag).rsplit(":", 1)[-1], "a tagged value")
