"""The node's on-disk replay journal (nodes/nonces.py): one layer, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.nonces import JOURNAL, JournalError, NonceJournal

NOW = 1_800_000_000.0


def opened(directory: Path, now: float = NOW, capacity: int = 1000, rewrite_after: int = 10_000) -> NonceJournal:
    journal = NonceJournal(directory, capacity, rewrite_after)
    journal.open(now)
    return journal


def test_a_nonce_is_accepted_once_and_stays_spent_after_reopening(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    assert journal.remember("nonce-aaaa", int(NOW) + 300, NOW)
    assert not journal.remember("nonce-aaaa", int(NOW) + 300, NOW)
    journal.close()
    reopened = opened(tmp_path, NOW + 100)
    assert not reopened.remember("nonce-aaaa", int(NOW) + 300, NOW + 100)
    assert reopened.remember("nonce-bbbb", int(NOW) + 400, NOW + 100)


def test_expired_nonces_are_dropped_when_the_file_is_rewritten(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    journal.remember("old-nonce", int(NOW) + 10, NOW)
    journal.remember("new-nonce", int(NOW) + 500, NOW)
    journal.close()
    reopened = opened(tmp_path, NOW + 60)
    assert len(reopened) == 1
    assert b"old-nonce" not in (tmp_path / JOURNAL).read_bytes()


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    journal.remember("whole-line", int(NOW) + 300, NOW)
    journal.close()
    with open(tmp_path / JOURNAL, "ab") as handle:
        handle.write(b"18000003")  # a crash in the middle of an append
    reopened = opened(tmp_path)
    assert len(reopened) == 1 and not reopened.remember("whole-line", int(NOW) + 300, NOW)


def test_a_full_journal_refuses_instead_of_forgetting(tmp_path: Path) -> None:
    journal = opened(tmp_path, capacity=3)
    for i in range(3):
        assert journal.remember(f"nonce-{i:04}", int(NOW) + 300, NOW)
    with pytest.raises(JournalError, match="retry"):
        journal.remember("one-more-nonce", int(NOW) + 300, NOW)
    assert journal.remember("one-more-nonce", int(NOW) + 300 + 400, NOW + 400)  # once the others expired


def test_dead_lines_are_compacted_away_while_running(tmp_path: Path) -> None:
    journal = opened(tmp_path, rewrite_after=100)
    for i in range(120):
        journal.remember(f"early-{i:06}", int(NOW) + 1, NOW)
    for i in range(120):  # by now the early ones have expired
        journal.remember(f"later-{i:06}", int(NOW) + 1000, NOW + 500)
    lines = (tmp_path / JOURNAL).read_bytes().count(b"\n")
    assert lines <= 121
    assert not journal.remember("later-000000", int(NOW) + 1000, NOW + 500)


def test_a_file_that_is_not_a_journal_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / JOURNAL).write_bytes(b"something else\n")
    with pytest.raises(OSError, match="not a walrusfs nonce journal"):
        opened(tmp_path)
    assert (tmp_path / JOURNAL).read_bytes() == b"something else\n"
