"""walrusfs.progress: every long operation's display. On a terminal a tqdm bar with rate and ETA;
elsewhere plain lines (no control characters) at the start, at most every few seconds, and at the end."""

from __future__ import annotations

import io

from walrusfs.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_plain_lines_at_start_every_interval_and_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress("restoring metadata", 8 << 20, stream=out, terminal=False, interval=5.0, clock=clock) as progress:
        for second in range(1, 13):
            clock.now += 1
            progress.update(second * (512 << 10))
    lines = out.getvalue().splitlines()
    assert lines == [
        "restoring metadata: 0.0 of 8.0 MiB (0%, 00:00 elapsed)",
        "restoring metadata: 2.5 of 8.0 MiB (31%, 0.5 MiB/s, 00:05 elapsed, ETA 00:11)",
        "restoring metadata: 5.0 of 8.0 MiB (62%, 0.5 MiB/s, 00:10 elapsed, ETA 00:06)",
        "restoring metadata: 6.0 of 8.0 MiB (75%, 0.5 MiB/s, 00:12 elapsed, ETA 00:04)",
    ]
    assert not any(ord(char) < 32 for char in out.getvalue().replace("\n", ""))


def test_counts_notes_and_a_total_learnt_later() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress("verifying blobs", None, unit="blob", stream=out, terminal=False, clock=clock)
    clock.now += 4
    progress.update(8, 20, note="2 in flight")
    progress.close()
    progress.close()  # once only
    assert out.getvalue().splitlines() == [
        "verifying blobs: 0 blobs (00:00 elapsed)",
        "verifying blobs: 8 of 20 blobs (40%, 2 blobs/s, 00:04 elapsed, ETA 00:06), 2 in flight",
    ]


def test_a_terminal_gets_a_bar_redrawn_in_place_with_rate_and_eta() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with Progress("uploading", 4 << 20, stream=out) as progress:
        progress.update(1 << 20, note="confirmed shards 0/5 needed")
        progress.update(4 << 20, note="confirmed shards 5/5 needed")
    text = out.getvalue()
    assert "\r" in text and "uploading" in text and "4.00M/4.00M" in text
    assert "confirmed shards 5/5 needed" in text and "B/s" in text
