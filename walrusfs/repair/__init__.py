"""Self-healing seen from outside the nodes: storage challenges (``walrusfs audit``).

The healing itself runs inside every storage node (``nodes/repair.py``, ``nodes/scrub.py``,
``nodes/feed.py``; docs/repair.md).
"""
