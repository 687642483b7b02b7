"""The bounded template sandbox: Jinja's sandbox with limits on time, size and depth, contained loaders,
the YAML-safe value filters, and template error frames that name the template file and line."""
from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, TemplateSyntaxError, Undefined
from jinja2.compiler import CodeGenerator, Frame
from jinja2.loaders import split_template_path
from jinja2.nodes import Concat
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg

from hybridorch.errors import HybridorchError, InputError, RenderError
from hybridorch.render import fastyaml
from hybridorch.render.fastyaml import Origin


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


_ascii_json = json.encoder.encode_basestring_ascii   # what json.dumps(ensure_ascii=True) writes for a str
# JSON writes a character past U+FFFF as a UTF-16 surrogate pair, which YAML refuses ("invalid Unicode character
# escape code"); YAML's own 8-digit escape says the same character
_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _astral(m: re.Match[str]) -> str:
    return "\\U%08x" % (0x10000 + ((int(m.group(1), 16) - 0xD800) << 10) + int(m.group(2), 16) - 0xDC00)


def _yaml_json(text: str) -> str:
    """JSON text as YAML reads it: surrogate pairs (an emoji, say) as YAML's \\U escape."""
    return _PAIR.sub(_astral, text) if "\\ud" in text else text


def _json_string(value: str) -> str:
    return _yaml_json(_ascii_json(value))


def yaml_value(value: Any) -> YamlText:
    """One value as a single-line JSON scalar/flow collection, which YAML reads back as exactly that value.

    JSON is quoted and escaped, so a string such as "a\\nkind: Pod" or "{{ x }}" can never become keys,
    documents or template code."""
    kind = type(value)
    # the common scalars directly: a large render writes hundreds of thousands of them
    if kind is str:
        return YamlText(_json_string(value))
    if kind is int:
        return YamlText(int.__repr__(value))
    if kind is bool:
        return YamlText("true" if value else "false")
    if kind is dict and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):   # labels
        return YamlText(_yaml_json(json.dumps(value, ensure_ascii=True)))
    if isinstance(value, YamlText):
        return value
    return YamlText(_yaml_json(json.dumps(_plain(value), ensure_ascii=True)))


def _finalize_yaml(value: Any) -> Any:
    # Every {{ expression }} goes through here: a value a template forgot to filter is still quoted. Its result
    # is output, not a value another filter reads, so the common scalars need not be marked as YamlText.
    kind = type(value)
    if kind is str:   # _json_string inlined: the most frequent call of a large render
        text = _ascii_json(value)
        return _PAIR.sub(_astral, text) if "\\ud" in text else text
    if kind is int:
        return int.__repr__(value)
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


_DICT_ATTRIBUTES = frozenset(dir(dict))


class TrustedEnvironment(Environment):
    """The built-in templates' environment: the same options, filters and output rules, without the sandbox;
    they do not change while a render runs, so they are not checked for edits on every use either."""

    def __init__(self, **options: Any):
        super().__init__(auto_reload=False, **options)
        self._flat: dict[str, dict[str, Any]] = {}

    def bound_filters(self) -> None:
        """Nothing to bound: these templates are this program's code."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `w.name` on a context dict: Jinja tries the attribute first and reads the key only after an
        # AttributeError, half a million times in a large render; a dict's own methods keep winning as they do
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def render_bounded(self, template: Any, context: dict[str, Any]) -> str:
        # Template.render merges the globals into every new context (a ChainMap walk per render): merge them once
        flat = self._flat.get(template.name)
        if flat is None:
            flat = self._flat[template.name] = dict(template.globals)
        try:
            return str(self.concat(template.root_render_func(template.new_context({**flat, **context}, shared=True))))
        except Exception:
            self.handle_exception()   # re-raised with the template's file and line in the traceback
            raise   # pragma: no cover - handle_exception always raises


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
            raise InputError(f"templates directory {user_dir} does not exist or is not a directory")
        self.dirs = dirs
        loader = _ContainedLoader(dirs)
        common: dict[str, Any] = dict(loader=loader, undefined=StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True, keep_trailing_newline=True)
        # user templates are input and run in the bounded sandbox; the built-in ones are this program's own code,
        # and the sandbox's checks on every attribute, call and value cost a third of a large render
        kind: type[BoundedSandbox] | type[TrustedEnvironment] = BoundedSandbox if user_dir else TrustedEnvironment
        self.yaml = kind(finalize=_finalize_yaml, autoescape=False, **common)
        self.xml = kind(autoescape=True, **common)
        self.unit = kind(finalize=unit_arg, autoescape=False, **common)
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
        return [doc for doc, _ in self.documents_with_origin(name, **context)]

    def documents_with_origin(self, name: str, /, **context: Any) -> list[tuple[dict[str, Any], Origin | None]]:
        """documents(), each with the skeleton it was read through (None when PyYAML read it): validation can then
        tell its shape without walking it."""
        text = self.text(name, **context)
        loader = _loader_for(text)
        fast = fastyaml.parse_rendered(text, loader)
        if fast is not None:
            return fast
        try:
            docs = [d for d in yaml.load_all(text, Loader=loader) if d is not None]
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
        return [(doc, None) for doc in docs]


class _NoAliasLoader(yaml.SafeLoader):
    """Rendered output never needs anchors/aliases (values are quoted); refusing them stops a template from
    rendering a few lines that expand into billions of nodes downstream."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed in rendered output",
                                              event.start_mark)
        return super().compose_node(parent, index)


_CLoader = getattr(yaml, "CSafeLoader", None)
_FLOW_NESTING = 1000   # libyaml's C composer recurses without a limit: deep flow nesting takes the Python loader


def _loader_for(text: str) -> type:
    """libyaml's loader (several times faster: rendering 10,000 workloads parsed 20,000 objects back) unless the
    text could nest deeply, where the Python loader's RecursionError is the safe answer. Both refuse aliases."""
    if _CLoader is None or text.count("[") + text.count("{") > _FLOW_NESTING:
        return _NoAliasLoader
    # an alias is written `*name`: text without a `*` has none to look for
    return _NoAliasCLoader if "*" in text else _CLoader


if _CLoader is not None:
    class _NoAliasCLoader(_CLoader):  # type: ignore[misc, valid-type]
        """The C loader, refusing aliases: its composer hands an aliased node out again, so a node met twice in
        a document is an alias (checked before anything is constructed)."""

        def construct_document(self, node: Any) -> Any:
            seen: set[int] = set()
            todo = [node]
            while todo:
                n = todo.pop()
                if id(n) in seen:
                    raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed in rendered output",
                                                      n.start_mark)
                seen.add(id(n))
                if isinstance(n, yaml.MappingNode):
                    todo.extend(x for pair in n.value for x in pair)
                elif isinstance(n, yaml.SequenceNode):
                    todo.extend(n.value)
            return super().construct_document(node)


def _template_frame(err: BaseException, dirs: Iterable[str] = ()) -> tuple[str, int] | None:
    """Jinja rewrites tracebacks so template frames carry the template file and line: find the innermost one."""
    roots = tuple(os.path.join(d, "") for d in dirs)
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename.endswith(".j2") or (roots and frame.filename.startswith(roots)):
            return frame.filename, frame.lineno or 0
    return None
