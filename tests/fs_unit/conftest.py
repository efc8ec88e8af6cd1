"""The fs unit tier's fixture (the harness is unit_fs.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from unit_fs import FakeBlobStore, UnitFs

FsBody = Callable[[UnitFs], Awaitable[None]]


@pytest.fixture
def fs_run(tmp_path: Path) -> Callable[..., None]:
    """fs_run(body, staging_limit=..., dirty_limit=...): run ``await body(fs)`` under trio with the
    uploader running, then stop it and close the database."""

    def run(body: FsBody, staging_limit: int = 64 << 20, dirty_limit: int = 32 << 20) -> None:
        async def main() -> None:
            fs = UnitFs(tmp_path, FakeBlobStore(), staging_limit, dirty_limit)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fs.uploader.run)
                    fs.ops.nursery = nursery
                    with trio.fail_after(30):
                        await body(fs)
                    nursery.cancel_scope.cancel()
            finally:
                fs.close()

        trio.run(main)

    return run
