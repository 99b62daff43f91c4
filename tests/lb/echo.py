"""An echo backend process for LB tests: greets with its name, echoes, closes after the client.

Run as `python -m tests.lb.echo NAME HOST PORT`; it prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Echo(asyncio.Protocol):
    """Sends NAME\\n, then echoes every byte; closes once the client has finished sending."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.name)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.transport.close()  # type: ignore[union-attr]
        return True


async def main(name: str, host: str, port: int) -> None:
    """Serve until killed."""
    loop = asyncio.get_running_loop()
    line = (name + "\n").encode()
    await loop.create_server(lambda: Echo(line), host, port, reuse_address=True, backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
