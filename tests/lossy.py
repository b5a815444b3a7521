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
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> LossyProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, and end the connections still served (Python 3.11's
        ``wait_closed`` does not wait for them: a handler left pending is destroyed with
        the loop, its sockets unclosed)."""
        if self.server is not None:
            self.server.close()
            for task in self._serving:
                task.cancel()
            await asyncio.gather(*self._serving, return_exceptions=True)
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._serving.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
