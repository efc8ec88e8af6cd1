"""Codec property tests run against every encoding type.

A module opts in with ``pytestmark = pytest.mark.usefixtures("each_encoding")``: each of its tests
then runs once per encoding, with ``encode(blob, n)`` (no explicit encoding) producing blobs of
that encoding whatever n is. Tests of one encoding's own spec pass ``encoding=`` explicitly.
"""

from __future__ import annotations

import pytest

from walrusfs.redstuff import encodings


@pytest.fixture(params=sorted(encodings.NAMES), ids=[encodings.NAMES[e] for e in sorted(encodings.NAMES)])
def each_encoding(request, monkeypatch) -> int:
    monkeypatch.setattr(encodings, "choose_encoding", lambda n_shards: request.param)
    return request.param
