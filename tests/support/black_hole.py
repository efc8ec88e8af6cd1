"""A black hole for tests: ``python black_hole.py`` listens on 127.0.0.1 (port printed as
``READY <port>``), accepts every connection, reads and discards what arrives, and never answers.
Runs until SIGTERM."""

from __future__ import annotations

import selectors
import socket


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    print(f"READY {listener.getsockname()[1]}", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if sock is listener:
                try:
                    connection, _ = listener.accept()
                except BlockingIOError:
                    continue
                connection.setblocking(False)
                selector.register(connection, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except ConnectionError:
                data = b""
            if data == b"":  # the peer gave up: forget it (silently, as ever)
                selector.unregister(sock)
                sock.close()


if __name__ == "__main__":
    main()
