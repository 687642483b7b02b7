"""The output of a render (objects and files, as data) and the atomic all-or-nothing writer of `render --out`;
the block-style YAML dumper every rendered file goes through."""
from __future__ import annotations

import json
import marshal
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import yaml

from hybridorch.core.labels import LABEL_WORKLOAD
from hybridorch.errors import OutputError
from hybridorch.render import fastyaml
from hybridorch.render.sandbox import YamlText


# --- the result ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderedFile:
    path: str      # relative to the output directory
    content: str


class BlockDumper(yaml.SafeDumper):
    """Block style everywhere, and multi-line strings (cloud-init user data) as readable literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


BlockDumper.add_representer(str, _str_representer)
BlockDumper.add_representer(YamlText, _str_representer)
fastyaml.register_str(YamlText)


_CDumper = getattr(yaml, "CSafeDumper", None)
if _CDumper is not None:
    class _CBlockDumper(_CDumper):  # type: ignore[misc, valid-type]
        """BlockDumper on libyaml's emitter: the same text, several times faster."""

    _CBlockDumper.add_representer(str, _str_representer)
    _CBlockDumper.add_representer(YamlText, _str_representer)


def _dump_one(doc: dict[str, Any], origin: fastyaml.Origin | None = None) -> str:
    options: dict[str, Any] = dict(sort_keys=False, default_flow_style=False, width=120, allow_unicode=False,
                                   explicit_start=True)
    if _CDumper is not None:
        fast = fastyaml.emit_parsed(origin, _CBlockDumper) if origin is not None else None
        if fast is not None:
            return fast
        fast = fastyaml.emit_block(doc, _CBlockDumper)
        if fast is not None:
            return fast
        text = yaml.dump_all([doc], Dumper=_CBlockDumper, **options)
        # libyaml ends a document whose last scalar keeps trailing newlines (`|+`) with `...`; PyYAML does not
        if not text.endswith("\n...\n"):
            return text
    return yaml.dump_all([doc], Dumper=BlockDumper, **options)


def dump_yaml(docs: Iterable[dict[str, Any]], memo: dict[int, str] | None = None,
              origins: dict[int, fastyaml.Origin] | None = None) -> str:
    """The documents as one YAML stream (each dumped alone: PyYAML's stream is their concatenation). `memo`
    keeps each document's text by id, so the stream of a render reuses what its files already dumped; `origins`
    (by id) has the skeleton a document was read through, which writes it without walking it."""
    out = []
    for doc in docs:
        text = memo.get(id(doc)) if memo is not None else None
        if text is None:
            text = _dump_one(doc, origins.get(id(doc)) if origins else None)
            if memo is not None:
                memo[id(doc)] = text
        out.append(text)
    return "".join(out)


@dataclass(frozen=True)
class Packed:
    """Files of objects rendered in a worker process: their objects marshalled (unpacked only when someone reads
    them: `render` prints text and needs none) and each file's text as dump_yaml writes it."""

    paths: tuple[str, ...]
    texts: tuple[str, ...]
    objects: bytes    # marshal of a list with one list of objects per path

    def groups(self) -> tuple[tuple[str, tuple[dict[str, Any], ...]], ...]:
        return tuple((path, tuple(docs)) for path, docs in zip(self.paths, marshal.loads(self.objects)))


class Rendered:
    """The output of a render: Kubernetes/KubeVirt objects in apply order and the files they go to, or local VM
    files. Objects of `packed` parts follow the others, in apply order as in their files."""

    def __init__(self, target: str, stack: str, documents: tuple[dict[str, Any], ...] = (),
                 written: tuple[RenderedFile, ...] = (),
                 groups: tuple[tuple[str, tuple[dict[str, Any], ...]], ...] = (), packed: tuple[Packed, ...] = (),
                 origins: dict[int, fastyaml.Origin] | None = None):
        self.target, self.stack = target, stack
        self.origins = origins or {}   # the skeleton each document was read through, by id (dump_yaml)
        self.written = written    # files written as they are (local VM files, the kustomization), after the groups
        self._documents, self._groups, self._packed = documents, groups, packed
        # each document's YAML text by id, as its file dumped it (the documents keep the ids valid)
        self.texts: dict[int, str] = {}

    @cached_property
    def _unpacked(self) -> tuple[tuple[str, tuple[dict[str, Any], ...]], ...]:
        # once: documents and groups hold the same objects
        return tuple(g for part in self._packed for g in part.groups())

    @cached_property
    def documents(self) -> tuple[dict[str, Any], ...]:
        """Every Kubernetes/KubeVirt object, in apply order."""
        return self._documents + tuple(d for _, docs in self._unpacked for d in docs)

    @cached_property
    def groups(self) -> tuple[tuple[str, tuple[dict[str, Any], ...]], ...]:
        """Files of objects as (path, objects)."""
        return self._groups + self._unpacked

    @cached_property
    def files(self) -> tuple[RenderedFile, ...]:
        """Everything write() writes, paths relative to its directory; objects are dumped only now (audit and
        apply need none), each once."""
        return tuple(RenderedFile(path, dump_yaml(docs, self.texts, self.origins)) for path, docs in self._groups) \
            + tuple(RenderedFile(path, text) for part in self._packed for path, text in zip(part.paths, part.texts)) \
            + self.written

    def stream(self) -> str:
        """One deterministic text: a multi-document YAML stream of the objects (kubernetes), or of the files (local).

        A local file is one YAML document `{path, content}` headed by the comment `--- # file: "<path>"`. The
        header is only ever a comment on a document start and the path is JSON-quoted; the content is a YAML
        scalar (indented block or quoted), so no line of any file can look like a header or a document start."""
        if self.target == "kubernetes":
            return dump_yaml(self._documents, self.texts, self.origins) \
                + "".join(t for part in self._packed for t in part.texts)
        out = []
        for f in self.files:
            body = yaml.dump({"path": f.path, "content": f.content}, Dumper=BlockDumper, sort_keys=False,
                             default_flow_style=False, width=120, allow_unicode=False)
            out.append(f"--- # file: {json.dumps(f.path, ensure_ascii=True)}\n{body}")
        return "".join(out)

    def documents_by_workload(self) -> dict[str, list[dict[str, Any]]]:
        """Workload name -> its objects (workload, Service); objects of no workload are under ''."""
        out: dict[str, list[dict[str, Any]]] = {}
        for doc in self.documents:
            out.setdefault(doc["metadata"].get("labels", {}).get(LABEL_WORKLOAD, ""), []).append(doc)
        return out

    def file(self, path: str) -> RenderedFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def write(self, out_dir: str) -> list[str]:
        """Make out_dir hold exactly these files, all or nothing.

        Everything is written into a temporary directory beside out_dir, which is then swapped in (the old
        directory renamed away, the new one renamed in, the old one removed). On any failure the previous
        content is untouched and no temporary directory is left. An existing out_dir must hold only files a
        render writes, so `--out .` or a directory of other things is refused rather than replaced."""
        out = Path(os.path.abspath(out_dir))
        try:   # a name too long, a directory one may not read (`--out /` meets /proc): nothing written yet
            present = out.exists() or out.is_symlink()
            foreign = [p for p in _files_under(out) if not _rendered_path(p)] \
                if present and out.is_dir() and not out.is_symlink() else []
        except OSError as err:
            raise OutputError(f"cannot write to {out_dir}: {err.strerror or err}; nothing was changed") from None
        if present:
            if out.is_symlink() or not out.is_dir():
                raise OutputError(f"cannot write to {out_dir}: it exists and is not a directory")
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise OutputError(f"cannot write to {out_dir}: it holds files a render does not write ({shown}); "
                                  f"choose a new or empty directory")
        stage: Path | None = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(stage, 0o777 & ~umask)   # mkdtemp makes 0700; a rendered directory is an ordinary one
            for f in self.files:
                target = stage / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f.content)
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                try:
                    os.rename(out, old / "content")
                except OSError:
                    old.rmdir()
                    raise
                try:
                    os.rename(stage, out)
                except OSError:
                    os.rename(old / "content", out)
                    old.rmdir()
                    raise
                stage = None
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(stage, out)
                stage = None
        except OSError as err:
            raise OutputError(f"cannot write to {out_dir}: {err.strerror or err}"
                              f"{' (' + err.filename + ')' if err.filename else ''}; nothing was changed") from None
        finally:
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
        return [str(Path(out_dir) / f.path) for f in self.files]


def _files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir())


# every path either target writes: kubernetes groups and kustomization, local <workload>/<file>
_RENDERED_PATH = re.compile(r"(kustomization\.yaml|(cluster|tenants|workloads)/[^/]+\.yaml"
                            r"|[a-z0-9-]+/(domain\.xml|user-data|meta-data))")


def _rendered_path(rel: str) -> bool:
    return _RENDERED_PATH.fullmatch(rel) is not None


