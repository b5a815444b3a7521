"""A TCP proxy that loses answers: it forwards each request, then closes the connection
instead of passing back the first ``lose`` answers (a router's reply lost on the way)."""

from __future__ import annotations

import asyncio
import contextlib


class LossyProxy:
    def __init__(self, host: str, port: int, lose: int) -> None:
        self.target = (host, port)
        self.lose = lose
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> LossyProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        losing = self.lose > 0
        self.lose -= 1 if losing else 0

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, drop: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if drop:
                        writer.close()  # the answer reached us: the client never sees it
                        return
                    dst.write(data)
                    await dst.drain()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, losing))
        finally:
            for w in (writer, up_writer):
                w.close()
