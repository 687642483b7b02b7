"""Render a Plan through Jinja templates into Kubernetes/KubeVirt objects or local VM files (libvirt + cloud-init).

Output is data first: every template's text is parsed back and validated (schemas, virt-xml-validate, cloud-init)
before anything is returned, so a Rendered is always valid and write() can never leave half a result behind.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, TemplateSyntaxError, Undefined
from jinja2.compiler import CodeGenerator, Frame
from jinja2.loaders import split_template_path
from jinja2.nodes import Concat
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg

from hybridorch.core import images
from hybridorch.render import validate
from hybridorch.errors import HybridorchError, RenderError
from hybridorch.core.labels import LABEL_MANAGED, LABEL_RUNTIME, LABEL_WORKLOAD, MANAGED_BY, object_labels
from hybridorch.core.plan import Plan
from hybridorch.core.policy import Placement, Profile
from hybridorch.core.runtime import ARCHES, cache_root, readiness_port, runs_image_in_vm
from hybridorch.core.spec import InnerContainer, Workload, memory_bytes
from hybridorch.render.domain import LocalFacts, domain_context, replica_forwards, sandbox_in_vm, vm_dir, workload_forwards

TARGETS = ("kubernetes", "local")
LABEL_VIRTUALIZATION = "hybridorch.dev/virtualization"
# the RuntimeClass sandboxed workloads name and the CRI handler it maps to, per policy sandboxRuntimeClass
# (the handlers' conventional names: Kata Containers' "kata", gVisor's "runsc")
RUNTIME_CLASSES = {"kata": ("hybridorch-kata", "kata"), "gvisor": ("hybridorch-gvisor", "runsc")}
RUNTIME_CLASS = RUNTIME_CLASSES["kata"][0]   # the default policies' class
# Boot disk of a Linux VM that names none: a public cloud image with cloud-init (podman for nested comes from apt)
DEFAULT_DISK_IMAGE = "quay.io/containerdisks/debian:12"
NONROOT_ID = 65532                  # the conventional "nonroot" uid/gid of distroless images
# Local disk a container may use (logs, writable layer, its /tmp emptyDir); request = limit, like cpu and memory
EPHEMERAL_STORAGE = "1Gi"
SCRATCH_SIZE = "256Mi"              # the /tmp emptyDir under a read-only root filesystem
SCRATCH_VOLUME = "hybridorch-tmp"


# --- the YAML-safe value filter --------------------------------------------------------------------

class YamlText(str):
    """Text already made YAML-safe; emitted as is."""


def _defined(value: Any) -> Any:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: raises naming the missing variable
    return value


def _plain(value: Any) -> Any:
    value = _defined(value)
    if isinstance(value, float):
        raise TypeError("floats are not rendered (YAML 1.1 may read them back differently); pass a string")
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"cannot render a {type(value).__name__} into YAML")


def yaml_value(value: Any) -> YamlText:
    """One value as a single-line JSON scalar/flow collection, which YAML reads back as exactly that value.

    JSON is quoted and escaped, so a string such as "a\\nkind: Pod" or "{{ x }}" can never become keys,
    documents or template code."""
    if isinstance(value, YamlText):
        return value
    return YamlText(json.dumps(_plain(value), ensure_ascii=True))


def _finalize_yaml(value: Any) -> Any:
    # Every {{ expression }} goes through here: a value a template forgot to filter is still quoted.
    return yaml_value(value)


def unit_arg(value: Any) -> YamlText:
    """One systemd unit-file word, double-quoted with C escapes; % and $ doubled so no specifier/variable expands."""
    if isinstance(value, YamlText):
        return value
    text = str(_plain(value))
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "$":
            out.append("$$")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return YamlText('"' + "".join(out) + '"')


def unit_text(value: Any) -> YamlText:
    """Free text for a unit setting such as Description=: one line, % doubled."""
    text = " ".join(str(_plain(value)).split())
    return YamlText(text.replace("%", "%%"))


# --- quantities --------------------------------------------------------------------------------------

def cpu_quantity(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(n: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0 and n >= size:
            return f"{n // size}{suffix}"
    return str(n)


# --- what one template may cost -------------------------------------------------------------------------
# User templates (--templates) are input: the sandbox stops them reaching Python internals, these bounds stop
# them from hanging or exhausting memory. Built-in templates stay far below every one of them.

MAX_SECONDS = 10.0            # wall time of one template
MAX_OUTPUT = 4 * 2**20        # characters one template renders, and the size of any value it builds
MAX_TEMPLATE_BYTES = 2**20    # size of one template file
MAX_RANGE = 10_000            # items of range(); the sandbox's own limit is 100,000
MAX_INT_BITS = 4096           # integers that `**` and `*` may produce (9 ** (9 ** 9) has ~1.6e9 bits)
MAX_ARG = 100_000             # integer arguments of calls and filters (widths, counts: "x".center(10**9))
MAX_CALL_DEPTH = 50           # nested calls (a macro calling itself)
_WIDE_FORMAT = re.compile(r"%[^a-zA-Z%]*\d{6,}|\{[^{}]*\d{6,}[^{}]*\}")   # "%9999999d", "{:>9999999}"


class TemplateLimitError(SecurityError):
    """A template exceeded one of the bounds above."""


class _Budget(threading.local):
    deadline = float("inf")
    depth = 0


_budget = _Budget()


def _check_time() -> None:
    if time.monotonic() > _budget.deadline:
        raise TemplateLimitError(f"rendering took longer than {MAX_SECONDS:g} s (a template loops too long)")


def _size(value: Any, what: str = "a value") -> int:
    """The rendered size of a value, roughly; refused above MAX_OUTPUT. Shared sub-structures count as often as
    they occur (that is what rendering them costs) and every node counts, so the walk itself stays bounded."""
    if isinstance(value, str):
        total = len(value)
    else:
        stack, total = [value], 0
        while stack and total <= MAX_OUTPUT:
            item = stack.pop()
            total += len(item) if isinstance(item, (str, bytes)) else 1
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (list, tuple, set, frozenset)):
                stack.extend(item)
    if total > MAX_OUTPUT:
        raise TemplateLimitError(f"{what} larger than {MAX_OUTPUT} characters")
    return total


def _check_size(value: Any, what: str = "a value") -> Any:
    _size(value, what)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_args(args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    for arg in (*args, *kwargs.values()):
        if _is_int(arg) and abs(arg) > MAX_ARG:
            raise TemplateLimitError(f"argument {arg if arg.bit_length() < 64 else 'of ' + str(arg.bit_length()) + ' bits'}"
                                     f" is larger than {MAX_ARG}")
        if isinstance(arg, str) and _WIDE_FORMAT.search(arg):
            raise TemplateLimitError("a format width or precision larger than 99999")
        _check_size(arg, "an argument")


def _bounded_range(*args: int) -> range:
    try:
        items = range(*args)
        n = len(items)
    except OverflowError:
        n = MAX_RANGE + 1
    if n > MAX_RANGE:
        raise TemplateLimitError(f"range() of more than {MAX_RANGE} items")
    return items


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    # the filtered value comes after the context/eval-context/environment a pass_* filter receives
    first = 1 if _PassArg.from_obj(f) is None else 2

    @functools.wraps(f)   # keeps jinja_pass_arg, so Jinja still passes the context
    def run(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        _check_args(args[first:], kwargs)
        if len(args) >= first:
            _size(args[first - 1], f"the value given to filter {name}")   # str()/join of a huge shared structure
        if name == "format" and len(args) >= first and isinstance(args[first - 1], str) \
                and _WIDE_FORMAT.search(args[first - 1]):
            raise TemplateLimitError("a format width or precision larger than 99999")
        return _check_size(f(*args, **kwargs), f"the result of filter {name}")

    return run


class _BoundedCodeGenerator(CodeGenerator):
    """`a ~ b` compiles to a plain join that no sandbox hook sees: route it through the size check."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"environment.checked_concat({func_name}((")
        for arg in node.nodes:
            self.write("environment.concat_piece(")
            self.visit(arg, frame)
            self.write("), ")
        self.write(")))")


class BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox plus bounds on time, size, range, big numbers and call depth (see MAX_*)."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any):
        finalize = options.pop("finalize", None)
        super().__init__(finalize=self._finalizer(finalize), **options)
        self.globals["range"] = _bounded_range
        self.globals.pop("lipsum", None)   # lorem ipsum of any length: nothing a manifest needs

    @staticmethod
    def _finalizer(inner: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
        def finalize(value: Any) -> Any:
            _check_size(value, "an output value")
            return inner(value) if inner else value
        return finalize

    def bound_filters(self) -> None:
        """Wrap every filter (call after adding our own)."""
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def concat_piece(self, value: Any) -> Any:
        return _check_size(value, "a ~ operand")

    def checked_concat(self, value: Any) -> Any:
        return _check_size(value, "a ~ result")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1 \
                and abs(left).bit_length() * right > MAX_INT_BITS:
            raise TemplateLimitError(f"{operator} would make a number of more than {MAX_INT_BITS} bits")
        if operator == "*":
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"* would make a number of more than {MAX_INT_BITS} bits")
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and _is_int(n) and n > 0 \
                        and _size(seq, "a * operand") * n > MAX_OUTPUT:
                    raise TemplateLimitError(f"* would make a value larger than {MAX_OUTPUT} characters")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_size([left, right], "a + result")
        if operator == "%" and isinstance(left, str):
            if _WIDE_FORMAT.search(left):
                raise TemplateLimitError("a format width or precision larger than 99999")
            _check_args(right if isinstance(right, tuple) else (right,), {})
        return _check_size(super().call_binop(context, operator, left, right), f"the result of {operator}")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_time()
        _check_args(args, kwargs)
        method = getattr(__obj, "__wrapped__", __obj)   # the sandbox wraps str.format; the format is its __self__
        if getattr(method, "__name__", "") in ("format", "format_map") and \
                isinstance(getattr(method, "__self__", None), str) and _WIDE_FORMAT.search(method.__self__):
            raise TemplateLimitError("a format width or precision larger than 99999")
        if _budget.depth >= MAX_CALL_DEPTH:
            raise TemplateLimitError(f"calls nested more than {MAX_CALL_DEPTH} deep (a macro that calls itself?)")
        _budget.depth += 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            _budget.depth -= 1
        return _check_size(result, "the result of a call")

    def render_bounded(self, template: Any, context: dict[str, Any]) -> str:
        """Render within MAX_SECONDS and MAX_OUTPUT. Every hook above checks the deadline; a loop that calls
        none of them (`{% for a in l %}{% for b in l %}…`) is stopped by SIGALRM where this is the main thread."""
        parts: list[str] = []
        size = 0
        _budget.deadline, _budget.depth = time.monotonic() + MAX_SECONDS, 0
        try:
            with _alarm(MAX_SECONDS):
                chunks = template.generate(**context)
                try:
                    for chunk in chunks:
                        size += len(chunk)
                        if size > MAX_OUTPUT:
                            raise TemplateLimitError(f"output larger than {MAX_OUTPUT} characters")
                        _check_time()
                        parts.append(chunk)
                finally:
                    chunks.close()
        finally:
            _budget.deadline, _budget.depth = float("inf"), 0
        return "".join(parts)


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise TemplateLimitError in this (main) thread after `seconds`; no thread is started. Does nothing off the
    main thread or when someone else already uses SIGALRM (the hooks' deadline checks still apply)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None) \
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TemplateLimitError(f"rendering took longer than {seconds:g} s (a template loops too long)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _ContainedLoader(FileSystemLoader):
    """A FileSystemLoader that reads only regular files of bounded size that really lie inside their search
    directory: a template (or a directory on its path) that is a symlink leaving it is refused."""

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)
        for base in self.searchpath:
            filename = posixpath.join(base, *pieces)
            if os.path.lexists(filename):
                break
        else:
            raise TemplateNotFound(template)
        real, root = os.path.realpath(filename), os.path.realpath(base)
        if os.path.commonpath([real, root]) != root:
            raise RenderError(f"{filename}: refused: the template is a symlink to {real}, outside {base}")
        if not os.path.isfile(real):
            raise RenderError(f"{filename}: refused: a template must be a regular file")
        if os.path.getsize(real) > MAX_TEMPLATE_BYTES:
            raise RenderError(f"{filename}: refused: a template may be at most {MAX_TEMPLATE_BYTES} bytes")
        try:
            with open(real, encoding=self.encoding) as fh:
                contents = fh.read(MAX_TEMPLATE_BYTES + 1)
        except UnicodeDecodeError:
            raise RenderError(f"{filename}: refused: the template is not {self.encoding} text") from None
        mtime = os.path.getmtime(real)

        def uptodate() -> bool:
            try:
                return os.path.getmtime(os.path.realpath(filename)) == mtime
            except OSError:
                return False

        return contents, os.path.normpath(filename), uptodate


# --- templates -----------------------------------------------------------------------------------------

def builtin_templates() -> Path:
    """templates/ inside the installed package, else the repository's top-level templates/."""
    import hybridorch

    installed = Path(hybridorch.__file__).parent / "templates"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "templates"


class Templates:
    """The sandboxed Jinja environments (one per output syntax) over user dirs first, then the built-ins."""

    def __init__(self, user_dir: str | None = None):
        dirs = ([str(Path(user_dir))] if user_dir else []) + [str(builtin_templates())]
        if user_dir and not Path(user_dir).is_dir():
            raise RenderError(f"templates directory {user_dir} does not exist")
        self.dirs = dirs
        loader = _ContainedLoader(dirs)
        common: dict[str, Any] = dict(loader=loader, undefined=StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True, keep_trailing_newline=True)
        self.yaml = BoundedSandbox(finalize=_finalize_yaml, autoescape=False, **common)
        self.xml = BoundedSandbox(autoescape=True, **common)
        self.unit = BoundedSandbox(finalize=unit_arg, autoescape=False, **common)
        for env in (self.yaml, self.xml, self.unit):
            env.filters.update(yaml=yaml_value, unit_arg=unit_arg, unit_text=unit_text)
            env.bound_filters()

    def _env(self, name: str) -> BoundedSandbox:
        if name.endswith(".xml.j2"):
            return self.xml
        if name.endswith(".service.j2"):
            return self.unit
        return self.yaml

    def text(self, name: str, /, **context: Any) -> str:
        """Render one template; every failure becomes a RenderError naming template file, line and cause."""
        env = self._env(name)
        try:
            template = env.get_template(name)
            return env.render_bounded(template, context)
        except HybridorchError:
            raise
        except TemplateNotFound as err:
            raise RenderError(f"template {err.name} not found in {' or '.join(self.dirs)}") from None
        except TemplateSyntaxError as err:
            raise RenderError(f"{err.filename or name}:{err.lineno}: template syntax error: {err.message}") from None
        except RecursionError as err:
            where = self._where(err, name)
            raise RenderError(f"{where}: templates nest too deeply (a template that includes itself?)") from None
        except MemoryError as err:
            where = self._where(err, name)
            raise RenderError(f"{where}: out of memory while rendering") from None
        except Exception as err:  # noqa: BLE001 - a user template can raise anything; it is their input
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            if not isinstance(err, (TemplateError, TypeError, ValueError)):
                message = f"{type(err).__name__}: {message}"
            raise RenderError(f"{self._where(err, name)}: {' '.join(message.split())}") from None

    def _where(self, err: BaseException, name: str) -> str:
        frame = _template_frame(err, self.dirs)
        return f"{frame[0]}:{frame[1]}" if frame else self.filename(name)

    def filename(self, name: str) -> str:
        try:
            return self._env(name).get_template(name).filename or name
        except TemplateError:
            return name

    def documents(self, name: str, /, **context: Any) -> list[dict[str, Any]]:
        """Render a YAML template and parse it back into its documents."""
        text = self.text(name, **context)
        try:
            docs = [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
        except RecursionError:
            raise RenderError(f"{self.filename(name)}: rendered YAML nests too deeply") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at output line {mark.line + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            raise RenderError(f"{self.filename(name)}: rendered text is not valid YAML{at}: {problem}") from None
        for doc in docs:
            if not isinstance(doc, dict):
                raise RenderError(f"{self.filename(name)}: rendered a {type(doc).__name__}, not a YAML mapping")
        return docs


class _NoAliasLoader(yaml.SafeLoader):
    """Rendered output never needs anchors/aliases (values are quoted); refusing them stops a template from
    rendering a few lines that expand into billions of nodes downstream."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed in rendered output",
                                              event.start_mark)
        return super().compose_node(parent, index)


def _template_frame(err: BaseException, dirs: Iterable[str] = ()) -> tuple[str, int] | None:
    """Jinja rewrites tracebacks so template frames carry the template file and line: find the innermost one."""
    roots = tuple(os.path.join(d, "") for d in dirs)
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename.endswith(".j2") or (roots and frame.filename.startswith(roots)):
            return frame.filename, frame.lineno or 0
    return None


# --- the result ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderedFile:
    path: str      # relative to the output directory
    content: str


class _Dumper(yaml.SafeDumper):
    """Block style everywhere, and multi-line strings (cloud-init user data) as readable literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)
_Dumper.add_representer(YamlText, _str_representer)


def dump_yaml(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.dump_all(list(docs), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                         allow_unicode=False, explicit_start=True)


@dataclass(frozen=True)
class Rendered:
    target: str
    stack: str
    documents: tuple[dict[str, Any], ...]   # every Kubernetes/KubeVirt object, in apply order
    files: tuple[RenderedFile, ...]         # everything write() writes, paths relative to its directory

    def stream(self) -> str:
        """One deterministic text: a multi-document YAML stream of the objects (kubernetes), or of the files (local).

        A local file is one YAML document `{path, content}` headed by the comment `--- # file: "<path>"`. The
        header is only ever a comment on a document start and the path is JSON-quoted; the content is a YAML
        scalar (indented block or quoted), so no line of any file can look like a header or a document start."""
        if self.target == "kubernetes":
            return dump_yaml(self.documents)
        out = []
        for f in self.files:
            body = yaml.dump({"path": f.path, "content": f.content}, Dumper=_Dumper, sort_keys=False,
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
        if out.exists() or out.is_symlink():
            if out.is_symlink() or not out.is_dir():
                raise RenderError(f"cannot write to {out_dir}: it exists and is not a directory")
            foreign = [p for p in _files_under(out) if not _rendered_path(p)]
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise RenderError(f"cannot write to {out_dir}: it holds files a render does not write ({shown}); "
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
            raise RenderError(f"cannot write to {out_dir}: {err.strerror or err}"
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


# --- contexts: plain data the templates lay out --------------------------------------------------------

def _labels(plan: Plan, workload: Workload | None = None, runtime: str | None = None,
            tenant: str | None = None) -> dict[str, str]:
    # the user's labels first, so ours (which prune and gc rely on) always win
    out = dict(plan.stack.labels)
    if workload is not None:
        out.update(workload.labels)
    out.update(object_labels(plan.stack.name, workload.name if workload else None, runtime, tenant))
    return out


def _selector(plan: Plan, workload: Workload) -> dict[str, str]:
    return object_labels(plan.stack.name, workload.name)


def _node_selector(p: Placement) -> dict[str, str]:
    out = {"kubernetes.io/arch": p.host_arch, "kubernetes.io/os": p.host_os}
    if p.needs_virtualization:
        out[LABEL_VIRTUALIZATION] = "true"
    return out


def _ports(ports: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"name": p.name or f"{p.protocol.lower()}-{p.port}", "port": p.port, "protocol": p.protocol}
            for p in ports]


def _disk_image(w: Workload) -> str | None:
    """The VM's boot disk image: vm.disk.image; the workload image when the spec itself asks for a VM (then
    `image` names a containerDisk); else none (a PVC) or the default cloud image."""
    if w.vm.disk_image or w.vm.disk_pvc:
        return w.vm.disk_image
    if w.runtime == "vm" and w.image:
        return w.image
    return DEFAULT_DISK_IMAGE


def _inner_containers(w: Workload) -> tuple[InnerContainer, ...]:
    """What runs inside the VM: the `containers` of a nested workload, or the workload's own container image
    when policy moved a container workload into a VM (e.g. it needs its own kernel)."""
    if w.containers:
        return w.containers
    if runs_image_in_vm(w):
        command = tuple(w.command or ()) + tuple(w.args or ())
        return (InnerContainer(w.name, w.image, command or None, dict(w.env), w.ports),)
    return ()


def _vm_ports(w: Workload) -> list[dict[str, Any]]:
    seen: dict[tuple[int, str], Any] = {}
    for p in list(w.ports) + [p for c in _inner_containers(w) for p in c.ports]:
        seen.setdefault((p.port, p.protocol), p)
    return _ports(seen.values())


def _workload_context(plan: Plan, p: Placement, namespace: str, image_dirs: list[Path]) -> dict[str, Any]:
    w = p.workload
    privileged = any(r in w.requires for r in ("privileged", "host-devices"))
    ready_port = readiness_port(w)
    ready_proto = next((x.protocol for x in w.ports if x.port == ready_port), "TCP")
    # a read-only root filesystem needs somewhere to write: /tmp, unless the user mounts a volume there
    scratch = [] if privileged or any(v.mount_path.rstrip("/") == "/tmp" for v in w.volumes) else \
        [{"name": SCRATCH_VOLUME, "mount_path": "/tmp", "size": SCRATCH_SIZE}]
    return {
        "name": w.name, "namespace": namespace, "runtime": p.runtime,
        "labels": _labels(plan, w, p.runtime, w.tenant), "selector": _selector(plan, w),
        "kind": "StatefulSet" if w.volumes else "Deployment", "replicas": w.replicas,
        # a locally built image by its content-derived tag: every node runs the same build, IfNotPresent is right
        "image": images.content_ref(w.image, image_dirs) if w.image else w.image,
        "command": list(w.command) if w.command else None,
        "args": list(w.args) if w.args else None,
        "env": [{"name": k, "value": v} for k, v in w.env.items()],
        "ports": _ports(w.ports), "resources": {"cpu": w.resources.cpu, "memory": w.resources.memory,
                                                "ephemeral": EPHEMERAL_STORAGE},
        "privileged": privileged, "host_network": "host-network" in w.requires, "nonroot_id": NONROOT_ID,
        "runtime_class": RUNTIME_CLASSES[plan.profile.sandbox_runtime_class][0] if p.runtime == "sandboxed" else None,
        "node_selector": _node_selector(p),
        "volumes": [{"name": v.name, "mount_path": v.mount_path, "size": v.size} for v in w.volumes],
        "scratch": scratch,
        "ready_port": ready_port if ready_proto == "TCP" else None,
        # replicas over hosts: a hard rule where the policy spreads replicas, else a preference
        "spread": None if w.replicas < 2 else ("DoNotSchedule" if plan.profile.spread_replicas else "ScheduleAnyway"),
    }


def _cloud_config(tpl: Templates, plan: Plan, p: Placement) -> str:
    """The #cloud-config user data of a VM: ours (hostname; for nested, podman + one unit per container),
    merged with the spec's vm.userData (lists appended, other keys from the spec win)."""
    w = p.workload
    units = []
    for c in _inner_containers(w):
        units.append({
            "name": c.name, "unit": f"hybridorch-{c.name}.service",
            "text": tpl.text("cloud-init/container.service.j2", stack=plan.stack.name, workload=w.name,
                             container={"name": c.name, "image": c.image,
                                        "command": list(c.command) if c.command else [],
                                        "env": [{"name": k, "value": v} for k, v in c.env.items()],
                                        "ports": _ports(c.ports)},
                             labels=_selector(plan, w)),
        })
    docs = tpl.documents("cloud-init/user-data.yaml.j2", hostname=w.name, stack=plan.stack.name, units=units)
    config = docs[0] if docs else {}
    if w.vm.user_data:
        try:
            extra = yaml.safe_load(w.vm.user_data)
        except yaml.YAMLError as err:
            raise RenderError(f"workload {w.name}: vm.userData is not YAML: {err}") from None
        if extra is not None and not isinstance(extra, dict):
            raise RenderError(f"workload {w.name}: vm.userData must be a #cloud-config mapping")
        for key, value in (extra or {}).items():
            if isinstance(value, list) and isinstance(config.get(key), list):
                config[key] = config[key] + value
            else:
                config[key] = value
    text = "#cloud-config\n" + yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                                         width=120)
    problem = validate.cloud_init_problem(text)
    if problem:
        raise RenderError(f"workload {w.name}: cloud-init user data is invalid: {problem}")
    return text


def _vm_context(tpl: Templates, plan: Plan, p: Placement, namespace: str) -> dict[str, Any]:
    w = p.workload
    windows = w.os == "windows"
    image = _disk_image(w)
    if windows and image == DEFAULT_DISK_IMAGE:
        raise RenderError(f"workload {w.name}: a windows VM needs vm.disk.image or vm.disk.pvc (its boot disk)")
    machine = w.vm.machine or ARCHES[w.arch].machine
    replicas = max(w.replicas, 1)
    return {
        "name": w.name, "namespace": namespace, "runtime": p.runtime,
        "labels": _labels(plan, w, p.runtime, w.tenant), "selector": _selector(plan, w),
        "names": [w.name] if replicas == 1 else [f"{w.name}-{i}" for i in range(replicas)],
        "run_strategy": "Always" if w.replicas > 0 else "Halted",
        "architecture": w.arch if p.emulated else None, "guest_arch": ARCHES[w.arch].uname,
        "machine": machine, "cores": w.vcpus, "cpu": w.resources.cpu, "memory": w.resources.memory,
        "memory_mib": w.resources.memory_bytes // 2**20,
        "node_selector": _node_selector(p), "ports": _vm_ports(w),
        "disk": {"image": image, "pvc": w.vm.disk_pvc, "size": w.vm.disk_size},
        "bus": "sata" if windows else "virtio", "nic_model": "e1000e" if windows else "virtio",
        "windows": windows, "accelerated": p.needs_virtualization and not p.emulated,
        "user_data": None if windows else _cloud_config(tpl, plan, p),
    }


def _tenant_context(plan: Plan, tenant: str, namespace: str, placements: list[Placement],
                    prefix: str = "") -> dict[str, Any]:
    loose = any(r in pl.workload.requires for pl in placements for r in ("privileged", "host-devices",
                                                                         "host-network"))
    # KubeVirt's virt-launcher pods need more than the restricted level allows
    vms = any(pl.runtime in ("vm", "nested") for pl in placements)
    cpu = mem = pods = storage = 0
    for pl in placements:
        # one extra replica per workload so a rolling update fits inside the quota
        n = pl.workload.replicas + 1
        cpu += (pl.workload.resources.cpu_millis + pl.overhead.cpu_millis) * n
        mem += (pl.workload.resources.memory_bytes + pl.overhead.memory_bytes) * n
        pods += n
        storage += sum(memory_bytes(v.size) for v in pl.workload.volumes) * max(pl.workload.replicas, 1)
    return {
        "tenant": tenant, "namespace": namespace, "stack": plan.stack.name,
        "labels": _labels(plan, tenant=tenant),
        "enforce": "privileged" if loose or vms else "restricted",
        "quota": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(mem), "pods": pods,
                  "storage": memory_quantity(storage) if storage else None},
        "default": {"cpu": "250m", "memory": "256Mi", "ephemeral": EPHEMERAL_STORAGE},
        "exposed": [{"name": pl.workload.name, "selector": _selector(plan, pl.workload),
                     "ports": _policy_ports(pl, tenant, prefix)} for pl in placements],
        "peers": _egress_peers(plan, tenant, prefix),
    }


def _policy_ports(p: Placement, tenant: str, prefix: str) -> list[dict[str, Any]]:
    """The declared ports of a workload with who may connect: its own tenant always, the namespaces of the
    tenants in allowFrom, everyone when public (then `from` is left out)."""
    declared = {(x.port, x.protocol): x for x in list(p.workload.ports)
                + [x for c in _inner_containers(p.workload) for x in c.ports]} \
        if p.runtime in ("vm", "nested") else {(x.port, x.protocol): x for x in p.workload.ports}
    return [{**port, "public": declared[(port["port"], port["protocol"])].public,
             "from": [f"{prefix}{t}" for t in declared[(port["port"], port["protocol"])].allow_from if t != tenant]}
            for port in (_vm_ports(p.workload) if p.runtime in ("vm", "nested") else _ports(p.workload.ports))]


def _egress_peers(plan: Plan, tenant: str, prefix: str) -> list[dict[str, Any]]:
    """The ports of other tenants' workloads that this tenant may reach (allowFrom names it, or public):
    each tenant's egress policy lets exactly those out, so both ends of the connection agree."""
    out = []
    for p in plan.placements:
        if p.workload.tenant == tenant:
            continue
        ports = [x for x in _policy_ports(p, p.workload.tenant, prefix)
                 if x["public"] or f"{prefix}{tenant}" in x["from"]]
        if ports:
            out.append({"name": p.workload.name, "namespace": f"{prefix}{p.workload.tenant}",
                        "selector": _selector(plan, p.workload), "ports": ports})
    return out


def runtime_class_objects(profile: Profile, tpl: Templates | None = None, stack: str | None = None
                          ) -> list[dict[str, Any]]:
    """The RuntimeClass sandboxed workloads use, with the profile's per-pod overhead (a cluster prerequisite)."""
    tpl = tpl or Templates()
    labels = object_labels(stack, runtime="sandboxed") if stack else {LABEL_MANAGED: MANAGED_BY,
                                                                       LABEL_RUNTIME: "sandboxed"}
    o = profile.overhead("sandboxed")
    name, handler = RUNTIME_CLASSES[profile.sandbox_runtime_class]
    kata = profile.sandbox_runtime_class == "kata"
    return tpl.documents("kubernetes/runtimeclass.yaml.j2", name=name, handler=handler,
                         labels=labels, overhead={"cpu": cpu_quantity(o.cpu_millis),
                                                  "memory": memory_quantity(o.memory_bytes)},
                         # a Kata pod is a VM: only nodes with KVM; gVisor runs on any node that has the handler
                         node_selector={LABEL_VIRTUALIZATION: "true"} if kata else None)


# --- rendering -----------------------------------------------------------------------------------------

def _check_objects(docs: list[dict[str, Any]], where: str) -> None:
    problems = []
    for doc in docs:
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        problems += [f"{where}: {name}: {msg}" for msg in validate.object_problems(doc)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise RenderError(f"rendered objects fail the Kubernetes {validate.KUBERNETES_VERSION}/KubeVirt "
                          f"schema: {shown}")


def _by_tenant(plan: Plan) -> dict[str, list[Placement]]:
    out: dict[str, list[Placement]] = {}
    for p in plan.placements:
        out.setdefault(p.workload.tenant, []).append(p)
    return out


def _render_kubernetes(tpl: Templates, plan: Plan, prefix: str) -> Rendered:
    tenants = _by_tenant(plan)
    contexts = {t: _tenant_context(plan, t, f"{prefix}{t}", ps, prefix) for t, ps in tenants.items()}
    namespaces = {t: tpl.documents("kubernetes/namespace.yaml.j2", **contexts[t]) for t in tenants}
    policies = {t: [d for name in ("networkpolicy", "limitrange", "resourcequota")
                    for d in tpl.documents(f"kubernetes/{name}.yaml.j2", **contexts[t])] for t in tenants}
    cluster = []
    if plan.has_runtime("sandboxed"):
        cluster = runtime_class_objects(plan.profile, tpl, plan.stack.name)
    workloads: dict[str, list[dict[str, Any]]] = {}
    image_dirs = images.image_dirs(plan.stack.file)
    for p in plan.placements:
        ns = f"{prefix}{p.workload.tenant}"
        if p.runtime in ("vm", "nested"):
            ctx = _vm_context(tpl, plan, p, ns)
            docs = tpl.documents("kubevirt/virtualmachine.yaml.j2", vm=ctx)
        else:
            ctx = _workload_context(plan, p, ns, image_dirs)
            docs = tpl.documents("kubernetes/workload.yaml.j2", w=ctx)
            if p.workload.replicas >= 2:
                docs += tpl.documents("kubernetes/poddisruptionbudget.yaml.j2", name=p.workload.name, namespace=ns,
                                      labels=ctx["labels"], selector=ctx["selector"])
        if ctx["ports"]:
            docs += tpl.documents("kubernetes/service.yaml.j2", name=p.workload.name, namespace=ns,
                                  labels=ctx["labels"], selector=ctx["selector"], ports=ctx["ports"])
        workloads[p.workload.name] = docs
    # one file per group; each tenant file carries its Namespace too, so kustomize users need nothing else
    groups = ([("cluster/runtimeclasses.yaml", cluster)] if cluster else []) \
        + [(f"tenants/{t}.yaml", namespaces[t] + policies[t]) for t in tenants] \
        + [(f"workloads/{name}.yaml", docs) for name, docs in workloads.items()]
    for path, docs in groups:
        _check_objects(docs, path)
    ordered = [d for t in tenants for d in namespaces[t]] + cluster \
        + [d for t in tenants for d in policies[t]] + [d for docs in workloads.values() for d in docs]
    files = [RenderedFile(path, dump_yaml(docs)) for path, docs in groups]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [path for path, _ in groups]}
    files.append(RenderedFile("kustomization.yaml", yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False,
                                                              default_flow_style=False)))
    return Rendered("kubernetes", plan.stack.name, tuple(ordered), tuple(files))


def _render_local(tpl: Templates, plan: Plan, facts: LocalFacts) -> Rendered:
    """One domain (and its cloud-init) per VM replica: <workload>/ for replica 0, <workload>-<i>/ for the others
    (names validation keeps free). These files are exactly what the local backend defines and boots. A sandboxed
    placement has its own VM too when Docker has no gVisor/Kata runtime (or the policy's localSandbox says vm)."""
    files: list[RenderedFile] = []
    sandbox_vms = sandbox_in_vm(plan.profile.local_sandbox, facts.sandbox_runtime)
    for p in plan.placements:
        if p.runtime not in ("vm", "nested") and not (p.runtime == "sandboxed" and sandbox_vms):
            continue   # containers run from the plan directly (docker backend); nothing to write
        w = p.workload
        ctx = _vm_context(tpl, plan, p, namespace="")
        has_disk = _disk_image(w) not in (None, DEFAULT_DISK_IMAGE)
        forwards = workload_forwards(w)
        for i in range(max(w.replicas, 1)):
            d = domain_context(facts, ctx, stack=plan.stack.name, arch=w.arch, replica=i, has_disk=has_disk,
                               forwards=replica_forwards(forwards, i), emulated=p.emulated,
                               overhead_millis=p.overhead.cpu_millis)
            # domain/vm/stack/vm_dir/guest_dir/has_disk: the names user templates written before `d` still use
            xml = tpl.text("libvirt/domain.xml.j2", d=d, domain=d["name"], vm=ctx, stack=plan.stack.name,
                           vm_dir=vm_dir(facts, plan.stack.name, w.name, i), guest_dir=f"{facts.guests_dir}/{w.arch}",
                           has_disk=has_disk)
            problem = validate.libvirt_problem(xml)
            if problem:
                raise RenderError(f"{tpl.filename('libvirt/domain.xml.j2')}: domain XML of {w.name} is invalid: "
                                  f"{problem}")
            where = w.name if i == 0 else f"{w.name}-{i}"
            files.append(RenderedFile(f"{where}/domain.xml", xml))
            if ctx["user_data"] is not None:
                meta = tpl.documents("cloud-init/meta-data.yaml.j2", hostname=w.name,
                                     instance_id=f"hybridorch-{plan.stack.name}-{where}")
                files.append(RenderedFile(f"{where}/user-data", ctx["user_data"]))
                files.append(RenderedFile(f"{where}/meta-data", dump_yaml(meta).removeprefix("---\n")))
    return Rendered("local", plan.stack.name, (), tuple(files))


@lru_cache(maxsize=8)
def _templates(user_dir: str | None) -> Templates:
    # compiled templates are reused; Jinja's loader still notices edited files (auto_reload checks mtimes)
    return Templates(user_dir)


def default_cache_dir() -> str:
    return str(cache_root())


def render_plan(plan: Plan, target: str = "kubernetes", templates_dir: str | None = None,
                namespace_prefix: str = "", cache_dir: str | None = None, local: LocalFacts | None = None) -> Rendered:
    """Render and validate a plan; raises RenderError (and returns nothing) when any part is invalid.

    cache_dir only shapes the local target's file paths (VM disks and seeds under cache_dir/state/<stack>/);
    `local` gives the real facts of this machine (paths, KVM or TCG, QEMU binaries), as the local backend needs."""
    if target not in TARGETS:
        raise RenderError(f"unknown render target {target!r}: use {' or '.join(TARGETS)}")
    tpl = _templates(str(Path(templates_dir).resolve()) if templates_dir else None)
    if target == "kubernetes":
        return _render_kubernetes(tpl, plan, namespace_prefix)
    return _render_local(tpl, plan, local or LocalFacts.placeholder(cache_dir or default_cache_dir()))


__all__ = ["render_plan", "Rendered", "RenderedFile", "Templates", "yaml_value", "unit_arg", "runtime_class_objects",
           "dump_yaml", "cpu_quantity", "memory_quantity", "builtin_templates", "TARGETS", "RUNTIME_CLASS",
           "RUNTIME_CLASSES"]
