"""Plain-text tables for the commands that print them (cluster status, committee status...)."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


__all__ = ["table"]
