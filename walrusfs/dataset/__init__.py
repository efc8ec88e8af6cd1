"""Datasets: a tree published as one content-addressed ID that anyone can verify (docs/datasets.md).

``ids`` (the ID and its text form), ``manifest`` (the canonical entries, pages and hash tree the ID
covers), ``index`` (where the pages and the bytes live: not covered by the ID, checked against it),
``scan`` (a local tree as entries), ``publish``, ``fetch`` (find and check a manifest on the
network), ``verify``, ``get`` and ``cli``.
"""
