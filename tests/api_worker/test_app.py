"""The API app in-process (aiohttp's test client) against a fake run directory: auth,
JSON errors, validation, commands acknowledged through status.json, reads, SSE, metrics."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import stat

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from api_worker import commands
from api_worker.auth import load_or_create_token
from api_worker.main import read_api_info
from core.config import write_json_atomic
from core.errors import OperatorError
from supervisor import control_file
from tests.api_worker.conftest import AUTH, TOKEN, make_app
from tests.api_worker.fakerun import FakeRun

READS = ["/api/status", "/api/slots", "/api/workers", "/api/reloads",
         "/api/reloads/r0000001", "/api/positions", "/api/params", "/api/candles/btc-5m",
         "/metrics"]
WRITES = ["/api/reload", "/api/params", "/api/pause", "/api/resume", "/api/stop",
          "/api/kill"]


async def until(cond, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- the token ----------------------------------------------------------------------------

def test_token_file_is_private_and_kept(tmp_path) -> None:
    path = tmp_path / "api.token"
    t1 = load_or_create_token(path)
    assert len(t1) >= 40 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_token(path) == t1                     # kept
    os.chmod(path, 0o644)
    assert load_or_create_token(path) == t1                     # tightened, not rotated
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    link = tmp_path / "link.token"
    link.symlink_to(path)
    with pytest.raises(OperatorError):
        load_or_create_token(link)


# -- auth -----------------------------------------------------------------------------------

async def test_every_route_needs_the_token(client: TestClient) -> None:
    for path in [*READS, "/api/events"]:
        r = await client.get(path)
        assert r.status == 401, path
        assert r.content_type == "application/json" and "error" in await r.json()
        r = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status == 403 and "error" in await r.json(), path
    for path in WRITES:
        r = await client.post(path, json={})
        assert r.status == 401 and (await r.json())["error"], path
        r = await client.post(path, json={}, headers={"Authorization": "Bearer nope"})
        assert r.status == 403 and (await r.json())["error"], path
    r = await client.get("/api/status", headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status == 401
    for path in READS:
        r = await client.get(path, headers=AUTH)
        assert r.status not in (401, 403), path


async def test_public_read_opens_reads_only(run: FakeRun) -> None:
    async with TestClient(TestServer(make_app(run, public_read=True))) as c:
        for path in READS:
            assert (await c.get(path)).status not in (401, 403), path
        for path in WRITES:
            assert (await c.post(path, json={})).status == 401, path
        assert (await c.get("/api/status", headers={"Authorization": "Bearer x"})).status \
            == 403


async def test_public_reads_refuse_a_dns_name_in_host(run: FakeRun) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends its own name."""
    async with TestClient(TestServer(make_app(run, public_read=True))) as c:
        for host, status in (("evil.example:8787", 403), ("127.0.0.1:8787", 200),
                             ("localhost:8787", 200), ("[::1]:8787", 200)):
            assert (await c.get("/api/status", headers={"Host": host})).status == status, host
        r = await c.get("/api/status", headers={"Host": "evil.example", **AUTH})
        assert r.status == 200                     # with the token the name does not matter


async def test_the_compare_is_constant_time(client: TestClient, monkeypatch) -> None:
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert (await client.get("/api/status", headers=AUTH)).status == 200
    assert (await client.get("/api/status",
                             headers={"Authorization": "Bearer \u00e9t\u00e9"})).status == 403
    assert seen and all(isinstance(a, bytes) and b == TOKEN.encode() for a, b in seen)


async def test_the_page_is_public_and_locked_down(client: TestClient) -> None:
    r = await client.get("/")                       # no token: the page holds no data
    assert r.status == 200 and r.content_type == "text/html"
    html = await r.text()
    assert 'id="slots"' in html
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert scripts
    for js in scripts:                              # exactly the page's own scripts may run
        digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert (await client.get("/", headers={"Authorization": "Bearer x"})).status == 403
    assert (await client.post("/")).status == 401
    assert (await client.get("/api/status", headers={"Cookie": f"t={TOKEN}"})).status == 401


# -- errors are JSON ------------------------------------------------------------------------

async def test_404_405_413_are_json(client: TestClient) -> None:
    r = await client.get("/nope", headers=AUTH)
    assert r.status == 404 and "error" in await r.json()
    r = await client.post("/api/nope", headers=AUTH)
    assert r.status == 404 and "error" in await r.json()
    r = await client.post("/api/status", headers=AUTH)
    assert r.status == 405 and "error" in await r.json() and "GET" in r.headers["Allow"]
    r = await client.delete("/api/pause", headers=AUTH)
    assert r.status == 405 and "error" in await r.json()
    r = await client.post("/api/reload", data=b"{" + b" " * (70 * 1024) + b"}", headers=AUTH)
    assert r.status == 413 and "error" in await r.json()
    r = await client.get("/api/candles/nope-5m", headers=AUTH)
    assert r.status == 404 and "error" in await r.json()
    r = await client.get("/api/reloads/unknown1", headers=AUTH)
    assert r.status == 404 and "error" in await r.json()


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/reload", {"timeout": "soon"}, "timeout"),
    ("/api/reload", {"timeout": -1}, "timeout"),
    ("/api/reload", {"shadow": True}, "shadow"),
    ("/api/reload", {"to": "XYZ"}, "to"),
    ("/api/reload", {"bogus": 1}, "bogus"),
    ("/api/reload", {"strategy": "/a.py", "previous": True}, "args"),
    ("/api/reload", {"strategy": "relative.py"}, "strategy"),
    ("/api/reload", [1, 2], "body"),
    ("/api/reload", "just a string", "body"),
    ("/api/pause", {"x": 1}, "x"),
    ("/api/params", {}, "params"),
    ("/api/params", {"params": [1]}, "params"),
    ("/api/params", {"params": {}, "extra": 1}, "extra"),
])
async def test_validation_names_the_field(client: TestClient, run: FakeRun, path: str,
                                          body: object, field: str) -> None:
    r = await client.post(path, json=body, headers=AUTH)
    assert r.status == 400
    out = await r.json()
    assert out["field"] == field and out["error"]
    assert run.control_commands() == []            # nothing was written


async def test_bad_json_and_wait_param(client: TestClient) -> None:
    r = await client.post("/api/pause", data=b"{nope", headers=AUTH)
    assert r.status == 400 and (await r.json())["field"] == "body"
    r = await client.post("/api/pause?wait=maybe", headers=AUTH)
    assert r.status == 400 and (await r.json())["field"] == "wait"


async def test_a_command_the_grammar_lacks_is_400(client: TestClient, monkeypatch) -> None:
    monkeypatch.delitem(control_file.COMMANDS, "kill", raising=False)
    r = await client.post("/api/kill", headers=AUTH)
    assert r.status == 400 and (await r.json())["field"] == "cmd"


async def test_no_bot_no_command(tmp_path) -> None:
    run = FakeRun(tmp_path, supervisor_pid=0)           # run.json of a dead supervisor
    async with TestClient(TestServer(make_app(run))) as c:
        r = await c.post("/api/pause", headers=AUTH)
        assert r.status == 503 and "not running" in (await r.json())["error"]
    assert run.control_commands() == []


# -- commands through control.json ----------------------------------------------------------

async def test_pause_writes_control_json_and_answers_with_the_ack(client: TestClient,
                                                                  run: FakeRun) -> None:
    task = asyncio.create_task(client.post("/api/pause", headers=AUTH))
    cmds = await until(run.control_commands)
    assert [(c["cmd"], c["args"]) for c in cmds] == [("pause", {})]
    assert stat.S_IMODE(os.stat(run.run_dir / "control.json").st_mode) == 0o600
    await asyncio.sleep(0.05)
    assert not task.done()                          # waits for the ack
    run.ack(cmds[0]["id"], "pause")
    r = await task
    assert r.status == 200
    assert (await r.json()) == {"ack": run.status["commands"][-1]}


async def test_an_idempotency_key_makes_a_retry_wait_for_the_first_command(
        client: TestClient, run: FakeRun) -> None:
    """A client that lost the answer re-sends with the same key: one command, one ack for
    both; the key on another command is a 422; a malformed key a 400."""
    key = {**AUTH, "Idempotency-Key": "deploy-42"}
    first = asyncio.create_task(client.post("/api/pause", headers=key))
    cmds = await until(run.control_commands)
    retry = asyncio.create_task(client.post("/api/pause", headers=key))
    run.ack("deploy-42", "pause")
    a, b = await first, await retry
    assert a.status == b.status == 200 and (await a.json()) == (await b.json())
    assert [c["id"] for c in cmds] == ["deploy-42"]
    assert [c["id"] for c in run.control_commands()] == ["deploy-42"]   # written once
    r = await client.post("/api/resume", headers=key)
    assert r.status == 422 and (await r.json())["field"] == "Idempotency-Key"
    r = await client.post("/api/pause", headers={**AUTH, "Idempotency-Key": "../x"})
    assert r.status == 400 and (await r.json())["field"] == "Idempotency-Key"
    assert len(run.control_commands()) == 1


async def test_reload_ok_rolled_back_and_refused(client: TestClient, run: FakeRun) -> None:
    async def bot(result: str, rec_result: str | None) -> None:
        cmd = (await until(lambda: [c for c in run.control_commands()
                                    if not any(a["id"] == c["id"]
                                               for a in run.status["commands"])]))[0]
        if rec_result is not None:
            run.add_reload({"id": f"r{cmd['id'][:7]}", "command_id": cmd["id"],
                            "result": rec_result, "from_epoch": 1, "to_epoch": 2,
                            "error": None if rec_result == "ok" else "boom"})
        run.ack(cmd["id"], "reload", result)

    for result, rec, code in (("ok", "ok", 200), ("rolled_back", "rolled_back", 409),
                              ("error", None, 422)):
        task = asyncio.create_task(client.post("/api/reload", json={"strategy": "/x/s.py"},
                                               headers=AUTH))
        await bot(result, rec)
        r = await task
        out = await r.json()
        assert r.status == code, out
        assert out["ack"]["result"] == result
        assert (out["reload"] or {}).get("result") == rec
    assert [c["args"] for c in run.control_commands()] == [{"strategy": "/x/s.py"}] * 3


async def test_reload_wait0_then_the_record_by_command_id(client: TestClient,
                                                          run: FakeRun) -> None:
    r = await client.post("/api/reload?wait=0", json={"timeout": 5}, headers=AUTH)
    assert r.status == 202
    cid = (await r.json())["id"]
    assert run.control_commands()[0]["id"] == cid
    r = await client.get(f"/api/reloads/{cid}", headers=AUTH)
    assert r.status == 202 and (await r.json())["pending"] is True
    rec = {"id": "r1234567", "command_id": cid, "result": "ok", "from_epoch": 1,
           "to_epoch": 2}
    run.add_reload(rec, jsonl=False)
    run.ack(cid, "reload")
    for rid in (cid, "r1234567"):
        r = await client.get(f"/api/reloads/{rid}", headers=AUTH)
        assert r.status == 200
        assert (await r.json())["reload"] == rec


async def test_params_is_a_params_command(client: TestClient, run: FakeRun) -> None:
    r = await client.post("/api/params?wait=0", json={"params": {"edge": 0.2}}, headers=AUTH)
    assert r.status == 202
    [cmd] = run.control_commands()
    if "params" in control_file.COMMANDS:
        assert (cmd["cmd"], cmd["args"]) == ("params", {"params": {"edge": 0.2}})
    else:
        assert (cmd["cmd"], cmd["args"]) == ("reload", {"params": {"edge": 0.2}})


async def test_no_ack_is_504(client: TestClient, run: FakeRun, monkeypatch) -> None:
    monkeypatch.setattr(commands, "ACK_TIMEOUT_S", 0.2)
    r = await client.post("/api/resume", headers=AUTH)
    out = await r.json()
    assert r.status == 504 and out["id"] == run.control_commands()[0]["id"]


# -- reads ----------------------------------------------------------------------------------

async def test_status_slots_workers_params_reloads(client: TestClient, run: FakeRun) -> None:
    r = await client.get("/api/status", headers=AUTH)
    assert r.status == 200 and (await r.json())["run_id"] == run.status["run_id"]
    assert (await (await client.get("/api/slots", headers=AUTH)).json())["slots"] \
        == run.status["slots"]
    assert set((await (await client.get("/api/workers", headers=AUTH)).json())["workers"]) \
        == {"feed", "strategy0"}
    assert (await (await client.get("/api/params", headers=AUTH)).json())["params"] \
        == {"edge": 0.1}
    for i in range(3):
        run.add_reload({"id": f"r000001{i}", "command_id": None, "result": "ok"})
    out = await (await client.get("/api/reloads?n=2", headers=AUTH)).json()
    assert [r["id"] for r in out["reloads"]] == ["r0000011", "r0000012"]
    # a record gone from status.json is still found in reloads.jsonl
    run.write_status(reloads=[])
    r = await client.get("/api/reloads/r0000010", headers=AUTH)
    assert r.status == 200 and (await r.json())["reload"]["id"] == "r0000010"


async def test_no_status_json_is_503(client: TestClient, run: FakeRun) -> None:
    os.unlink(run.paths.status_json)
    r = await client.get("/api/status", headers=AUTH)
    assert r.status == 503 and "is the bot running" in (await r.json())["error"]


async def test_positions_from_the_journal(client: TestClient, run: FakeRun) -> None:
    out = await (await client.get("/api/positions", headers=AUTH)).json()
    assert out == {"summary": run.status["positions"], "open": [], "recent": []}
    run.journal()
    out = await (await client.get("/api/positions", headers=AUTH)).json()
    assert [o["client_key"] for o in out["open"]] == ["key0"]
    assert out["open"][0]["label"] == "btc-5m" and out["open"][0]["outcome"] == "Up"
    assert "request" not in out["open"][0]                      # never the signed order
    [rec] = out["recent"]
    assert rec["client_key"] == "key1" and rec["win"] is True and rec["label"] == "eth-5m"


async def test_candles_of_a_slot(client: TestClient, run: FakeRun) -> None:
    r = await client.get("/api/candles/btc-5m", headers=AUTH)
    assert r.status == 503                                      # no feed yet
    run.candles("BTCUSDT", n=100)
    out = await (await client.get("/api/candles/btc-15m?n=3", headers=AUTH)).json()
    assert out["symbol"] == "BTCUSDT" and out["interval"] == "1m"
    assert [c["close"] for c in out["candles"]] == [197.0, 198.0, 199.0]
    assert len((await (await client.get("/api/candles/btc-5m", headers=AUTH)).json())
               ["candles"]) == 60
    r = await client.get("/api/candles/btc-5m?n=0", headers=AUTH)
    assert r.status == 400 and (await r.json())["field"] == "n"
    out = await (await client.get("/api/candles/eth-5m", headers=AUTH)).json()
    assert out["candles"] == []


# -- events ---------------------------------------------------------------------------------

async def read_event(resp) -> bytes:
    return await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)


async def test_sse_sends_the_status_on_change(run: FakeRun) -> None:
    async with TestClient(TestServer(make_app(run, keepalive_s=0.3))) as c:
        resp = await c.get("/api/events", headers=AUTH)
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert await read_event(resp) == b"retry: 2000\n\n"
        first = await read_event(resp)
        assert first.startswith(b"event: status\nid: ")
        assert orjson.loads(first.split(b"data: ", 1)[1])["tick"] == 10
        run.write_status(tick=11)
        ev = await read_event(resp)
        assert orjson.loads(ev.split(b"data: ", 1)[1])["tick"] == 11
        assert await read_event(resp) == b": keepalive\n\n"    # nothing changed for 0.3 s
        # a burst of writes is coalesced: at most 4 events a second, the newest wins
        t0 = asyncio.get_running_loop().time()
        for t in range(12, 40):
            run.write_status(tick=t)
            await asyncio.sleep(0.01)
        ticks = []
        while not ticks or ticks[-1] != 39:
            ev = await read_event(resp)
            if ev.startswith(b"event:"):
                ticks.append(orjson.loads(ev.split(b"data: ", 1)[1])["tick"])
        elapsed = asyncio.get_running_loop().time() - t0
        assert len(ticks) <= 2 + elapsed * 4
        resp.close()


# -- metrics --------------------------------------------------------------------------------

def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_from_the_status(client: TestClient, run: FakeRun) -> None:
    run.candles()                                   # one segment of this run
    r = await client.get("/metrics", headers=AUTH)
    assert r.status == 200 and r.content_type == "text/plain"
    m = samples(await r.text())
    assert m[("noblink_ticks_total", ())] == 10
    assert m[("noblink_worker_restarts_total", (("worker", "feed"),))] == 2
    assert m[("noblink_worker_rss_bytes", (("worker", "feed"),))] == 50.5 * 2**20
    assert m[("noblink_worker_heartbeat_age_seconds", (("worker", "feed"),))] == 0.12
    assert m[("noblink_reloads_total", (("result", "ok"),))] == 1
    assert m[("noblink_last_reload_phase_seconds", (("phase", "spawn"),))] == 0.3
    assert m[("noblink_feed_parse_errors_total", ())] == 3
    assert m[("noblink_rejections_total", (("reason", "DUPLICATE"),))] == 1
    assert m[("noblink_win_rate", (("window", "100"),))] == 0.5
    assert m[("noblink_evaluation_latency_seconds", (("quantile", "0.5"),))] == 0.0025
    assert m[("noblink_evaluation_seconds_bucket", (("le", "0.001"),))] == 3   # cumulative
    assert m[("noblink_evaluation_seconds_bucket", (("le", "0.005"),))] == 9
    assert m[("noblink_evaluation_seconds_bucket", (("le", "+Inf"),))] == 10
    assert m[("noblink_evaluation_seconds_count", ())] == 10
    assert m[("noblink_evaluation_seconds_sum", ())] == 0.15
    assert m[("noblink_shm_bytes", ())] == os.stat(run.paths.seg("windows")).st_size
    assert m[("noblink_status_up", ())] == 1
    run.write_status(tick=25)
    run.add_reload({"id": "r2", "result": "rolled_back", "phases_ms": {"spawn": 5.0}})
    m2 = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert m2[("noblink_ticks_total", ())] == 25
    assert m2[("noblink_reloads_total", (("result", "rolled_back"),))] == 1
    assert m2[("noblink_api_requests_total", (("code", "200"),))] >= 1


# -- api.json -------------------------------------------------------------------------------

def test_read_api_info(tmp_path) -> None:
    assert read_api_info(tmp_path) is None
    doc = {"url": "http://127.0.0.1:1", "token_file": str(tmp_path / "api.token"),
           "pid": os.getpid(), "remote": False, "public_read": False}
    write_json_atomic(tmp_path / "api.json", doc)
    assert read_api_info(tmp_path) == doc
    write_json_atomic(tmp_path / "api.json", {**doc, "pid": 0})       # its process is gone
    assert read_api_info(tmp_path) is None
    (tmp_path / "api.json").write_text("{half")
    assert read_api_info(tmp_path) is None
