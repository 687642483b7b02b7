"""Reading XML input safely (libvirt domain XML given to `audit`): defusedxml's expat reader refuses entity
declarations and external references, nesting is bounded, and errors name the line without quoting the input.

The text comes from safeload.read_input (a regular file, size-limited, UTF-8); this module only parses it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterator
from xml.sax import SAXParseException
from xml.sax.xmlreader import InputSource
from xml.sax.handler import ContentHandler, feature_external_ges, feature_external_pes, feature_namespaces

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden
from defusedxml.expatreader import DefusedExpatParser

from hybridorch.errors import Problem, SpecError

# a libvirt domain is about 6 levels deep; expat itself does not recurse, the bound keeps every walk over the tree
# (and every reader after it) short
MAX_XML_DEPTH = 64


@dataclass
class XmlNode:
    """An element with the line it starts on (for SARIF regions); text is its own character data, joined."""

    tag: str
    attrs: dict[str, str]
    line: int
    children: list["XmlNode"] = field(default_factory=list)
    text: str = ""

    def find(self, *path: str) -> list["XmlNode"]:
        nodes = [self]
        for tag in path:
            nodes = [c for n in nodes for c in n.children if c.tag == tag]
        return nodes

    def iter(self) -> Iterator["XmlNode"]:
        """Every element below and including this one, without recursion."""
        todo = [self]
        while todo:
            node = todo.pop()
            yield node
            todo.extend(reversed(node.children))


class _TooDeep(Exception):
    pass


class _Builder(ContentHandler):
    """Elements into XmlNodes; character data gathered in lists (appending to a str per callback is quadratic for
    inputs such as two million `&amp;`, each of which expat reports separately)."""

    def __init__(self, max_depth: int):
        super().__init__()
        self.max_depth = max_depth
        self.open: list[tuple[XmlNode, list[str]]] = []
        self.root: XmlNode | None = None
        self.locator: Any = None

    def setDocumentLocator(self, locator: Any) -> None:
        self.locator = locator

    def line(self) -> int:
        return int(self.locator.getLineNumber() or 0) if self.locator is not None else 0

    def startElement(self, name: str, attrs: Any) -> None:
        if len(self.open) >= self.max_depth:
            raise _TooDeep()
        node = XmlNode(name, dict(attrs.items()), self.line())
        if self.open:
            self.open[-1][0].children.append(node)
        else:
            self.root = node
        self.open.append((node, []))

    def endElement(self, name: str) -> None:
        node, chunks = self.open.pop()
        node.text = "".join(chunks)

    def characters(self, content: str) -> None:
        if self.open:
            self.open[-1][1].append(content)


def _refusal(err: DefusedXmlException) -> str:
    # defusedxml's own messages name the entity; ours say what is refused and why, quoting nothing
    if isinstance(err, EntitiesForbidden):
        return "XML entity declarations are not accepted (they can expand without bound)"
    if isinstance(err, DTDForbidden):
        return "a DOCTYPE is not accepted"
    return "XML external references are not accepted (they would read other files)"


def parse_xml(text: str, path: str, max_depth: int = MAX_XML_DEPTH) -> XmlNode:
    """The root element of an XML document; anything malformed, too deep or unsafe is a one-line SpecError at
    its line that quotes nothing of the input."""
    builder = _Builder(max_depth)
    parser = DefusedExpatParser(forbid_dtd=False, forbid_entities=True, forbid_external=True)
    parser.setFeature(feature_namespaces, False)
    parser.setFeature(feature_external_ges, False)
    parser.setFeature(feature_external_pes, False)
    parser.setContentHandler(builder)
    source = InputSource()
    source.setCharacterStream(io.StringIO(text))   # parse(), not feed(): it hands the handler its line locator
    try:
        parser.parse(source)
    except SAXParseException as err:
        raise _xml_error(path, f"XML syntax error: {err.getMessage()}", err.getLineNumber()) from None
    except DefusedXmlException as err:
        raise _xml_error(path, _refusal(err), builder.line()) from None
    except _TooDeep:
        raise _xml_error(path, f"XML nested deeper than {max_depth} levels", builder.line()) from None
    if builder.root is None:
        raise _xml_error(path, "no XML root element", 0)
    return builder.root


def _xml_error(path: str, message: str, line: int | None) -> SpecError:
    return SpecError([Problem(path, int(line or 0), "", message)])
