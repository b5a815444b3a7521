"""``shardflow.Client``: the async Python client of the HTTP API, and a thin sync wrapper.

Starts always carry a workflow ID (generated here when not given), so retrying a
start after a 429/503 or a dropped connection can only ever yield one workflow.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

from shardflow.infra import tracing
from shardflow.infra.errors import (
    BadRequestError,
    InvalidScheduleError,
    InvalidWorkflowIdError,
    OverloadedError,
    ResultTimeoutError,
    ScheduleConflictError,
    ScheduleNotFoundError,
    ShardflowError,
    ShardUnavailableError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from shardflow.router.errors import ForbiddenError, RequestTooLargeError, UnauthorizedError
from shardflow.shard import codec
from shardflow.shard.model import FINISHED

ERRORS: dict[str, type[ShardflowError]] = {
    "bad_request": BadRequestError,
    "invalid_json": BadRequestError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "not_found": WorkflowNotFoundError,
    "conflict": WorkflowConflictError,
    "finished": WorkflowFinishedError,
    "too_large": RequestTooLargeError,
    "unknown_workflow": UnknownWorkflowError,
    "invalid_id": InvalidWorkflowIdError,
    "invalid_schedule": InvalidScheduleError,
    "overloaded": OverloadedError,
    "shard_unavailable": ShardUnavailableError,
    "slot_moved": ShardUnavailableError,
}
RETRYABLE = (OverloadedError, ShardUnavailableError)


# What a load balancer in front of the routers answers when none could serve the request.
GATEWAY_STATUSES = (502, 503, 504)


def _error(status: int, payload: Any) -> ShardflowError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        if status in GATEWAY_STATUSES:
            return ShardUnavailableError(f"no router answered (HTTP {status} from a proxy)")
        return ShardflowError(f"HTTP {status} with a body that is not Shardflow's")
    cls = ERRORS.get(str(error.get("code", "")), ShardflowError)
    return cls(str(error.get("message", f"HTTP {status}")))


class Client:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        admin_token: str | None = None,
        retries: int = 5,
        backoff: float = 0.1,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Admin requests (schedule changes) carry the admin token, else the token.
        admin = admin_token or token
        self._admin_headers = {"Authorization": f"Bearer {admin}"} if admin else {}
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=None, connect=10)
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        retry: bool = True,
        admin: bool = False,
        traceparent: str | None = None,
    ) -> tuple[int, Any]:
        status, payload, _ = await self._call_counted(
            method, path, body, params, retry, admin, traceparent
        )
        return status, payload

    async def _call_counted(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        retry: bool = True,
        admin: bool = False,
        traceparent: str | None = None,
    ) -> tuple[int, Any, int]:
        """The answer, and how many attempts it took (a retry may follow an attempt that
        reached the server and whose answer was lost). Each request carries the caller's
        trace context (``traceparent``, else the current OpenTelemetry span's)."""
        data = None if body is None else codec.dumps(body, "the request body")
        headers = {"Content-Type": "application/json"} if data else {}
        traceparent = traceparent or tracing.current_traceparent()
        if traceparent is not None:
            headers["traceparent"] = traceparent
        if admin:
            headers |= self._admin_headers
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._http().request(
                    method,
                    self.url + path,
                    data=data,
                    params=params,
                    headers=headers or None,
                ) as resp:
                    raw = await resp.read()
                    try:
                        payload = json.loads(raw or b"null")
                    except ValueError:  # not a router's answer: a proxy's error page
                        payload = None
                    if resp.status < 400 and (payload is not None or not raw):
                        return resp.status, payload, attempt
                    exc = _error(resp.status, payload)
            except (TimeoutError, aiohttp.ClientConnectionError) as err:
                exc = ShardUnavailableError(f"the router at {self.url} is unreachable: {err!r}")
            if not (retry and isinstance(exc, RETRYABLE) and attempt <= self.retries):
                raise exc
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        id: str | None = None,
        routing_key: str | None = None,
        priority: int = 0,
        wait: float | None = None,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        """Start a workflow; ``priority``: higher is claimed first (-1000..1000). With
        ``wait`` (seconds), the same request waits for the outcome: the answer is then the
        result document (status, output, error) if the workflow finished in time.
        ``traceparent``: the W3C trace its runs join (default: the current OpenTelemetry
        span's, when the application traces)."""
        body: dict[str, Any] = {"workflow": workflow, "input": input, "id": id or uuid.uuid4().hex}
        if routing_key is not None:
            body["routing_key"] = routing_key
        if priority:
            body["priority"] = priority
        params = None if wait is None else {"wait": str(wait)}
        _, doc = await self._call(
            "POST", "/v1/workflows", body, params=params, traceparent=traceparent
        )
        return dict(doc)

    async def run(
        self, workflow: str, input: Any = None, *, timeout: float | None = None, **options: Any
    ) -> Any:
        """Start a workflow and return its output (raising as :meth:`result` does): one
        request when it finishes within the router's wait, long polls after that.
        ``options``: those of :meth:`start` (id, routing_key, priority)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        wait = 30.0 if timeout is None else min(30.0, timeout)
        doc = await self.start(workflow, input, wait=wait, **options)
        if doc["status"] not in FINISHED:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            doc = await self.wait(doc["id"], left)
        return _output(doc)

    async def start_many(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start a batch; items are start bodies ({workflow, input, id?, routing_key?})."""
        batch = [{**item, "id": item.get("id") or uuid.uuid4().hex} for item in items]
        _, doc = await self._call("POST", "/v1/workflows/batch", {"workflows": batch})
        return list(doc["results"])

    async def status(self, workflow_id: str) -> dict[str, Any]:
        _, doc = await self._call("GET", f"/v1/workflows/{_quote(workflow_id)}")
        return dict(doc)

    async def wait(self, workflow_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Long-poll until the workflow finishes; its {id, status, output, error}."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - loop.time()))
            code, doc = await self._call(
                "GET", f"/v1/workflows/{_quote(workflow_id)}/result", params={"timeout": str(left)}
            )
            if code == 200:
                return dict(doc)
            if deadline is not None and loop.time() >= deadline:
                raise ResultTimeoutError(
                    f"workflow {workflow_id} did not finish within {timeout} s"
                )

    async def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        return _output(await self.wait(workflow_id, timeout))

    async def send_event(
        self, workflow_id: str, name: str, payload: Any = None, *, dedup_id: str | None = None
    ) -> bool:
        """Deliver an event once. A dedup ID is always sent (generated when not given), so
        a retry after a 503 or a dropped connection never delivers it twice. True when it
        was delivered by this call (with a generated ID, also when an earlier attempt of
        this call delivered it); False for a dedup ID the workflow already had."""
        generated = dedup_id is None
        body: dict[str, Any] = {"payload": payload, "id": dedup_id or uuid.uuid4().hex}
        _, doc, attempts = await self._call_counted(
            "POST", f"/v1/workflows/{_quote(workflow_id)}/events/{_quote(name)}", body
        )
        return bool(doc["delivered"]) or (generated and attempts > 1)

    async def retry(self, workflow_id: str) -> str:
        """Run a failed workflow again from its failed step."""
        _, doc = await self._call("POST", f"/v1/workflows/{_quote(workflow_id)}/retry")
        return str(doc["status"])

    # -- cron schedules --------------------------------------------------------------------
    async def create_schedule(
        self,
        name: str,
        workflow: str,
        cron: str,
        *,
        input: Any = None,
        timezone: str = "UTC",
        overlap: str = "skip",
    ) -> dict[str, Any]:
        """A schedule starting ``workflow`` on every tick of ``cron`` (see ``shard.cron``)."""
        body = {
            "name": name,
            "workflow": workflow,
            "cron": cron,
            "input": input,
            "timezone": timezone,
            "overlap": overlap,
        }
        try:
            _, doc = await self._call("POST", "/v1/schedules", body, admin=True)
        except WorkflowConflictError as exc:
            raise ScheduleConflictError(exc.message) from None
        return dict(doc)

    async def schedules(self) -> list[dict[str, Any]]:
        _, doc = await self._call("GET", "/v1/schedules")
        return list(doc["schedules"])

    async def schedule(self, name: str) -> dict[str, Any]:
        try:
            _, doc = await self._call("GET", f"/v1/schedules/{_quote(name)}")
        except WorkflowNotFoundError as exc:
            raise ScheduleNotFoundError(exc.message) from None
        return dict(doc)

    async def delete_schedule(self, name: str) -> None:
        try:
            await self._call("DELETE", f"/v1/schedules/{_quote(name)}", admin=True)
        except WorkflowNotFoundError as exc:
            raise ScheduleNotFoundError(exc.message) from None

    async def cancel(self, workflow_id: str) -> str:
        _, doc = await self._call("POST", f"/v1/workflows/{_quote(workflow_id)}/cancel")
        return str(doc["status"])

    async def list(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params = {"limit": str(limit)}
        for key, value in (("status", status), ("workflow", workflow), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        _, doc = await self._call("GET", "/v1/workflows", params=params)
        return dict(doc)

    async def cluster(self) -> dict[str, Any]:
        _, doc = await self._call("GET", "/v1/cluster")
        return dict(doc)


def _output(doc: dict[str, Any]) -> Any:
    """A finished workflow's output from its result document; its failure as an error."""
    error = doc.get("error") or {}
    if doc["status"] == "failed":
        raise WorkflowFailedError(
            f"workflow {doc['id']} failed: {error.get('type')}: {error.get('message')}", error
        )
    if doc["status"] == "cancelled":
        raise WorkflowCancelledError(f"workflow {doc['id']} was cancelled", error)
    return doc["output"]


def _quote(part: str) -> str:
    from urllib.parse import quote

    return quote(part, safe="")


class SyncClient:
    """Blocking wrapper for scripts: each call runs the async client on a private loop."""

    def __init__(self, url: str, token: str | None = None, admin_token: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = Client(url, token, admin_token=admin_token)

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def start(self, workflow: str, input: Any = None, **kw: Any) -> dict[str, Any]:
        return dict(self._run(self._client.start(workflow, input, **kw)))

    def run(self, workflow: str, input: Any = None, **kw: Any) -> Any:
        return self._run(self._client.run(workflow, input, **kw))

    def status(self, workflow_id: str) -> dict[str, Any]:
        return dict(self._run(self._client.status(workflow_id)))

    def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        return self._run(self._client.result(workflow_id, timeout))

    def send_event(self, workflow_id: str, name: str, payload: Any = None, **kw: Any) -> bool:
        return bool(self._run(self._client.send_event(workflow_id, name, payload, **kw)))

    def cancel(self, workflow_id: str) -> str:
        return str(self._run(self._client.cancel(workflow_id)))

    def retry(self, workflow_id: str) -> str:
        return str(self._run(self._client.retry(workflow_id)))

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()
