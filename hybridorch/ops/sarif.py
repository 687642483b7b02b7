"""Where SARIF results point: artifact locations as percent-encoded relative URI references (RFC 3986) under the
`%SRCROOT%` base, which the run maps to the directory the audit ran in (a file:// URI ending in a slash).
"""
from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any
from urllib.parse import quote_from_bytes

SRCROOT = "%SRCROOT%"
# RFC 3986 pchar minus the percent sign: unreserved, sub-delims, ":" and "@" stay; every other byte of the
# file name (UTF-8 or whatever the file system holds) is percent-encoded
_PCHAR = "!$&'()*+,;=:@-._~"


def base_uri(base_dir: str) -> str:
    """The directory as an absolute file:// URI with a trailing slash, so relative references resolve inside it."""
    uri = PurePath(os.path.abspath(base_dir)).as_uri()
    return uri if uri.endswith("/") else uri + "/"


def relative_reference(path: str, base_dir: str) -> str:
    """`path` (relative to `base_dir`, or absolute) as a relative-path reference from `base_dir`: each segment
    percent-encoded, `..` where the file lies outside, and `./` before a first segment holding `:` (which would
    otherwise read as a URI scheme)."""
    full = os.path.normpath(os.path.join(os.path.abspath(base_dir), path))
    segments = os.path.relpath(full, os.path.abspath(base_dir)).split(os.sep)
    uri = "/".join(quote_from_bytes(os.fsencode(s), safe=_PCHAR) for s in segments)
    return "./" + uri if ":" in segments[0] else uri


def artifact_location(path: str, base_dir: str) -> dict[str, Any]:
    return {"uri": relative_reference(path, base_dir), "uriBaseId": SRCROOT}


def original_uri_base_ids(base_dir: str) -> dict[str, Any]:
    return {SRCROOT: {"uri": base_uri(base_dir),
                      "description": {"text": "The directory hybridorch audit ran in."}}}
