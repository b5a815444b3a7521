"""The router over a real 3-shard cluster: end to end, errors, down shards, two routers."""

from __future__ import annotations

import asyncio
import io
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from examples.bench import make_input
from shardflow.devcluster.launcher import LocalPostgres
from shardflow.infra.errors import (
    InvalidWorkflowIdError,
    ShardUnavailableError,
    UnknownWorkflowError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from shardflow.router.client import Client
from shardflow.shard.model import FINISHED
from tests.cluster_fixtures import SHARDS, LiveCluster
from tests.lossy import LossyProxy
from tests.waiting import until


async def test_thousand_workflows_across_three_shards(cluster: LiveCluster):
    client = await cluster.add_router()
    singles = await asyncio.gather(*(client.start("w3", make_input(i)) for i in range(200)))
    batch = await client.start_many(
        [{"workflow": "w3", "input": make_input(i)} for i in range(200, 1000)]
    )
    assert all("error" not in r and r["created"] for r in batch)
    ids = [s["id"] for s in singles] + [r["id"] for r in batch]
    assert len(set(ids)) == 1000
    results = await asyncio.gather(*(client.result(i, timeout=120) for i in ids))
    assert all(r["notified"] for r in results)
    for shard_id in SHARDS:
        assert (
            await cluster.count_on(
                shard_id, "SELECT count(*) FROM shardflow.workflows WHERE status = 'completed'"
            )
            > 100
        )
    # Pagination returns exactly the started workflows, once each.
    seen: list[str] = []
    cursor = None
    while True:
        page = await client.list(limit=150, cursor=cursor, workflow="w3")
        seen += [w["id"] for w in page["workflows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    completed = await client.list(status="completed", limit=5)
    assert len(completed["workflows"]) == 5


async def test_routing_key_keeps_a_family_on_one_shard(cluster: LiveCluster):
    client = await cluster.add_router()
    docs = [await client.start("w3", make_input(i), routing_key="customer-7") for i in range(20)]
    assert {d["shard"] for d in docs} == {cluster.shard_of("customer-7")}
    status = await client.status(docs[0]["id"])  # found although its ID hashes elsewhere
    assert status["shard"] == cluster.shard_of("customer-7")
    for key in (
        "id",
        "workflow",
        "version",
        "status",
        "input",
        "output",
        "error",
        "attempt",
        "shard",
        "slot",
        "created_at",
        "updated_at",
        "steps",
        "compensations",
    ):
        assert key in status


async def test_start_is_idempotent_and_conflicts(cluster: LiveCluster):
    client = await cluster.add_router()
    url = cluster.routers[0].url
    body = {"workflow": "w3", "input": make_input(1), "id": "same"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/workflows", json=body) as r1:
            assert r1.status == 201
        async with http.post(url + "/v1/workflows", json=body) as r2:
            assert r2.status == 200 and (await r2.json())["id"] == "same"
    with pytest.raises(WorkflowConflictError):
        await client.start("w3", make_input(2), id="same")


async def _raw(url: str, method: str, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(method, url + path, **kw) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "code"),
    [
        ("POST", "/v1/workflows", {"data": b"{not json"}, 400, "invalid_json"),
        ("POST", "/v1/workflows", {"data": b"NaN"}, 400, "invalid_json"),
        ("POST", "/v1/workflows", {"json": ["a"]}, 400, "bad_request"),
        ("POST", "/v1/workflows", {"json": {"workflow": 3}}, 400, "bad_request"),
        ("POST", "/v1/workflows", {"json": {"workflow": "w3", "extra": 1}}, 400, "bad_request"),
        ("POST", "/v1/workflows", {"json": {"workflow": "w3", "id": ""}}, 422, "invalid_id"),
        ("POST", "/v1/workflows", {"json": {"workflow": "w3", "id": "x" * 201}}, 422, "invalid_id"),
        ("POST", "/v1/workflows", {"json": {"workflow": "w3", "id": "a\x00b"}}, 422, "invalid_id"),
        ("POST", "/v1/workflows", {"json": {"workflow": "w3", "id": "a\tb"}}, 422, "invalid_id"),
        ("POST", "/v1/workflows", {"json": {"workflow": "w3", "id": "del\x7f"}}, 422, "invalid_id"),
        (
            "POST",
            "/v1/workflows",
            {"json": {"workflow": "w3", "routing_key": "a\nb"}},
            422,
            "invalid_id",
        ),
        ("POST", "/v1/workflows", {"json": {"workflow": "nope"}}, 422, "unknown_workflow"),
        ("POST", "/v1/workflows?wait=soon", {"json": {"workflow": "w3"}}, 400, "bad_request"),
        ("POST", "/v1/workflows?wait=-1", {"json": {"workflow": "w3"}}, 400, "bad_request"),
        (
            "POST",
            "/v1/workflows",
            {"data": io.BytesIO(b"[" + b"1," * 600_000 + b"1]")},
            413,
            "too_large",
        ),
        (
            "POST",
            "/v1/workflows/batch",
            {"json": {"workflows": [{"workflow": "w3"}] * 1001}},
            400,
            "bad_request",
        ),
        ("POST", "/v1/workflows/batch", {"json": {"workflows": []}}, 400, "bad_request"),
        ("GET", "/v1/workflows/missing", {}, 404, "not_found"),
        ("GET", "/v1/workflows/missing/result?timeout=1", {}, 404, "not_found"),
        ("GET", "/v1/workflows?limit=0", {}, 400, "bad_request"),
        ("GET", "/v1/workflows?status=nope", {}, 400, "bad_request"),
        ("GET", "/v1/workflows?cursor=%%%", {}, 400, "bad_request"),
        ("POST", "/v1/workflows/missing/cancel", {}, 404, "not_found"),
        ("POST", "/v1/workflows/missing/events/x", {"json": {"payload": 1}}, 404, "not_found"),
        (
            "POST",
            "/v1/workflows/x/events/y",
            {"json": {"payload": 1, "bad": 2}},
            400,
            "bad_request",
        ),
        ("GET", "/v1/nothing-here", {}, 404, "not_found"),
        ("DELETE", "/v1/workflows", {}, 405, "method_not_allowed"),
    ],
)
async def test_bad_requests_get_stable_error_codes(
    cluster: LiveCluster, method: str, path: str, kw: dict[str, Any], status: int, code: str
):
    await cluster.add_router()
    got, body, _ = await _raw(cluster.routers[0].url, method, path, **kw)
    assert (got, body["error"]["code"]) == (status, code), body
    assert body["error"]["message"]


async def test_an_event_whose_answer_was_lost_is_delivered_once(cluster: LiveCluster):
    """The client retries after a dropped connection with the same (generated) dedup ID."""
    client = await cluster.add_router()
    doc = await client.start("approval", {"twice": True})
    router = urlsplit(cluster.routers[0].url)
    proxy = await LossyProxy(router.hostname or "", router.port or 0, lose=1).start()
    try:
        async with Client(f"http://127.0.0.1:{proxy.port}", backoff=0.01) as lossy:
            assert await lossy.send_event(doc["id"], "approved", 1)
    finally:
        await proxy.close()
    events = await cluster.count_on(
        doc["shard"], f"SELECT count(*) FROM shardflow.events WHERE workflow_id = '{doc['id']}'"
    )
    assert events == 1


async def test_events_and_cancel_over_http(cluster: LiveCluster):
    client = await cluster.add_router()
    doc = await client.start("approval", {"twice": True})
    assert await client.send_event(doc["id"], "approved", 1, dedup_id="a")
    assert not await client.send_event(doc["id"], "approved", 1, dedup_id="a")
    assert await client.send_event(doc["id"], "approved", 2)
    assert await client.result(doc["id"], timeout=30) == {"payload": 1, "second": 2}
    status, body, _ = await _raw(
        cluster.routers[0].url,
        "POST",
        f"/v1/workflows/{doc['id']}/events/approved",
        json={"payload": 3},
    )
    assert (status, body["error"]["code"]) == (409, "finished")
    sleeper = await client.start("long_sleep", None)
    assert await client.cancel(sleeper["id"]) in ("pending", "running", "sleeping", "cancelled")
    assert (await client.wait(sleeper["id"], timeout=30))["status"] == "cancelled"


async def test_a_start_can_wait_for_the_outcome(cluster: LiveCluster):
    client = await cluster.add_router()
    url = cluster.routers[0].url
    body = {"workflow": "echoing", "input": {"n": 1}, "id": "start-and-wait"}
    status, doc, _ = await _raw(url, "POST", "/v1/workflows?wait=30", json=body)
    assert status == 201, doc
    assert (doc["id"], doc["status"], doc["output"], doc["error"]) == (
        "start-and-wait",
        "completed",
        {"n": 1},
        None,
    )
    assert doc["shard"] == cluster.shard_of("start-and-wait")
    # An identical repeat answers with the outcome too; a plain start only starts.
    status, again, _ = await _raw(url, "POST", "/v1/workflows?wait=5", json=body)
    assert (status, again) == (200, doc)
    status, plain, _ = await _raw(url, "POST", "/v1/workflows", json=body)
    assert status == 200 and "output" not in plain
    # Not finished within the wait: the start's answer; the result follows it as usual.
    status, waiting, _ = await _raw(
        url, "POST", "/v1/workflows?wait=0.3", json={"workflow": "approval", "input": {}}
    )
    assert status == 201 and waiting["status"] not in FINISHED
    assert "output" not in waiting
    assert await client.send_event(waiting["id"], "approved", 5)
    assert await client.result(waiting["id"], timeout=30) == {"payload": 5, "second": None}
    # The client's run: start and result in one call, failures raised.
    assert await client.run("echoing", [1, 2], timeout=30) == [1, 2]
    with pytest.raises(WorkflowFailedError):
        await client.run("failing", None, timeout=30)
    waited = await asyncio.gather(*(client.run("w3", make_input(i)) for i in range(30)))
    assert all(w["notified"] for w in waited)


async def test_result_long_poll_answers_202_when_not_done(cluster: LiveCluster):
    client = await cluster.add_router()
    doc = await client.start("long_sleep", None)
    status, body, _ = await _raw(
        cluster.routers[0].url, "GET", f"/v1/workflows/{doc['id']}/result?timeout=0.2"
    )
    assert status == 202 and body["id"] == doc["id"]


async def test_bearer_tokens(cluster: LiveCluster):
    await cluster.add_router(tokens=["s3cret"])
    url = cluster.routers[0].url
    status, body, _ = await _raw(url, "GET", "/v1/cluster")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, _, _ = await _raw(url, "GET", "/v1/cluster", headers={"Authorization": "Bearer no"})
    assert status == 401
    status, body, _ = await _raw(
        url, "GET", "/v1/cluster", headers={"Authorization": "Bearer s3cret"}
    )
    assert status == 200 and len(body["shards"]) == 3
    assert (await _raw(url, "GET", "/healthz"))[0] == 200


async def test_overload_is_429_with_retry_after(cluster: LiveCluster):
    client = await cluster.add_router(max_inflight=1)
    doc = await client.start("long_sleep", None)
    router = cluster.routers[0]
    url = router.url
    poll = asyncio.create_task(_raw(url, "GET", f"/v1/workflows/{doc['id']}/result?timeout=3"))

    async def occupied() -> bool:
        return bool(router.metrics.inflight._value.get())

    await until(occupied, what="the long poll to hold the only slot")
    status, body, headers = await _raw(url, "GET", "/v1/cluster")
    assert (status, body["error"]["code"]) == (429, "overloaded")
    assert headers["Retry-After"] == "1"
    assert (await poll)[0] == 202


async def test_down_shard_is_503_and_its_workflows_finish_later(
    cluster: LiveCluster, pg_cluster: LocalPostgres
):
    client = await cluster.add_router()
    victim = SHARDS[1]
    before = [f"early-{i}" for i in range(200) if cluster.shard_of(f"early-{i}") == victim][:5]
    for wid in before:
        await client.start("long_sleep", None, id=wid)
    pg_cluster.stop_one(victim)
    try:
        doomed = next(f"k{i}" for i in range(1000) if cluster.shard_of(f"k{i}") == victim)
        status, body, headers = await _raw(
            cluster.routers[0].url,
            "POST",
            "/v1/workflows",
            json={"workflow": "w3", "input": make_input(1), "id": doomed},
        )
        assert (status, body["error"]["code"]) == (503, "shard_unavailable")
        assert headers["Retry-After"] == "1"
        with pytest.raises(ShardUnavailableError):
            await client.status(before[0])
        other = next(f"k{i}" for i in range(1000) if cluster.shard_of(f"k{i}") != victim)
        assert (await client.start("w3", make_input(2), id=other))["status"] in (
            "pending",
            "running",
        )
    finally:
        pg_cluster.restart_one(victim)
    for wid in before:
        assert await client.cancel(wid) in ("pending", "running", "sleeping", "cancelled")
        assert (await client.wait(wid, timeout=60))["status"] == "cancelled"
    await client.start("w3", make_input(3), id=doomed)
    assert (await client.result(doomed, timeout=60))["reserved"] == 3


async def test_two_routers_serve_one_cluster(cluster: LiveCluster):
    a = await cluster.add_router()
    b = await cluster.add_router()
    doc = await a.start("w3", make_input(5))
    assert (await b.result(doc["id"], timeout=30))["reserved"] == 5
    assert (await b.status(doc["id"]))["status"] == "completed"


async def test_client_error_types(cluster: LiveCluster):
    client = await cluster.add_router()
    with pytest.raises(UnknownWorkflowError):
        await client.start("nope", {})
    with pytest.raises(InvalidWorkflowIdError):
        await client.start("w3", {}, id="x" * 300)
    with pytest.raises(WorkflowNotFoundError):
        await client.status("missing")
    unreachable = Client("http://127.0.0.1:9", retries=1, backoff=0.01)
    with pytest.raises(ShardUnavailableError):
        await unreachable.status("x")
    await unreachable.close()


async def test_children_stay_on_their_parents_shard(cluster: LiveCluster):
    client = await cluster.add_router()
    parents = [await client.start("family", {"n": i}) for i in range(6)]
    for doc in parents:
        assert (await client.result(doc["id"], timeout=60))["first"] is not None
        children = await cluster.fetch_on(
            doc["shard"],
            "SELECT count(*) AS n FROM shardflow.workflows WHERE parent = $1",
            doc["id"],
        )
        assert children[0]["n"] == 3, "every child is on its parent's shard"


async def test_an_undeclared_method_is_405_with_allow(cluster: LiveCluster):
    await cluster.add_router()
    async with aiohttp.ClientSession() as http:
        async with http.request("TRACE", cluster.routers[0].url + "/healthz") as resp:
            assert resp.status == 405 and "GET" in resp.headers["Allow"]
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
        async with http.delete(cluster.routers[0].url + "/v1/cluster/shards/nope") as resp:
            assert resp.status in (401, 403, 404)
