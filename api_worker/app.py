"""The aiohttp application: routes, handlers and the order of the middlewares.

    GET  /                      the dashboard page (page.py; no token: it holds no data)
    GET  /api/status            status.json as it is
    GET  /api/slots | /api/workers | /api/params
    GET  /api/reloads[?n=50]    the last n reload records (reloads.jsonl), and the one running
    GET  /api/reloads/{id}      one record, by reload id or by the id of the command
    GET  /api/positions[?n=20]  posstats summary, open orders and recent settlements (journal)
    GET  /api/candles/{label}[?n=60]   the last n closed 1m candles of a slot's asset
    GET  /api/events            Server-Sent Events (events.py)
    GET  /metrics               Prometheus (metrics.py)
    POST /api/reload | /api/params | /api/pause | /api/resume | /api/stop | /api/kill
         [?wait=0]              a command through control.json, answered with its ack

Middlewares, outermost first: ``json_errors`` (every answer JSON, counted), then ``Auth``.
docs/api.md is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api_worker import commands, events, metrics, page
from api_worker.auth import Auth
from api_worker.candles import BY_LABEL, MAX_CANDLES, Candles, CandlesUnavailable
from api_worker.errors import MAX_BODY, REQUESTS, ApiError, json_errors, json_response
from api_worker.positions import JournalUnavailable, read_positions
from api_worker.reader import JsonFile, ReloadLog, Snapshot
from state.segment import pid_alive
from supervisor.control_file import COMMANDS, ID_RE

BODY_LIMIT = 64 * 1024
COMMAND_ROUTES = ("reload", "pause", "resume", "stop", "kill")
_REMEMBER_SENT = 1000


@dataclass(frozen=True)
class ApiConfig:
    run_dir: Path
    public_read: bool = False
    max_body: int = BODY_LIMIT
    stream: events.StreamConfig = field(default_factory=events.StreamConfig)
    ack_poll_s: float = 0.05


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        v = lo - 1
    if not lo <= v <= hi:
        raise ApiError(400, f"{name} must be an integer from {lo} to {hi}", field=name)
    return v


def _wait_param(request: web.Request) -> bool:
    raw = request.query.get("wait", "1").lower()
    if raw not in ("0", "1", "false", "true"):
        raise ApiError(400, "wait must be 0 or 1", field="wait")
    return raw in ("1", "true")


class Api:
    """The handlers and what they share: the readers, the SSE watcher, the auth check."""

    def __init__(self, cfg: ApiConfig, token: str) -> None:
        self.cfg = cfg
        run_dir = Path(cfg.run_dir)
        self.run_dir = run_dir
        self.status = JsonFile(run_dir / "status.json")
        self.run_json = JsonFile(run_dir / "run.json")
        self.reload_log = ReloadLog(run_dir / "reloads.jsonl")
        self.candles = Candles(self.run_json)
        self.watcher = events.StatusWatcher(self.status, cfg.stream)
        self.auth = Auth(token, public_read=cfg.public_read, public_paths={"/"})
        self.page_doc = page.load()
        self.requests: Counter[int] = Counter()
        self._sent: OrderedDict[str, str] = OrderedDict()   # command ids this process wrote
        self._watch_task: asyncio.Task | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _snap(self) -> Snapshot:
        snap = self.status.load()
        if snap is None:
            raise ApiError(503, f"no status.json in {self.run_dir}: is the bot running?")
        return snap

    def _doc(self) -> dict[str, Any]:
        return self._snap().doc

    async def _body(self, request: web.Request) -> object:
        raw = await request.read()          # 413 past client_max_size
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"the body is not JSON: {e}", field="body") from None

    def _bot_alive(self) -> None:
        run = self.run_json.doc()
        if run is None:
            raise ApiError(503, f"no bot in {self.run_dir} (no run.json)")
        pid = run.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid):
            raise ApiError(503, f"the bot of {self.run_dir} is not running (supervisor pid "
                           f"{pid} is gone); a command now would run at its next start")

    async def on_startup(self, _app: web.Application) -> None:
        self.watcher.poll()
        self._watch_task = asyncio.create_task(self.watcher.run(), name="status-watcher")

    async def on_shutdown(self, _app: web.Application) -> None:
        self.watcher.closing.set()          # event streams end, so shutdown does not wait

    async def on_cleanup(self, _app: web.Application) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await asyncio.to_thread(self.candles.close)

    @staticmethod
    async def on_prepare(_request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers.setdefault("Referrer-Policy", "no-referrer")

    # -- reads ------------------------------------------------------------------------------

    async def page(self, _request: web.Request) -> web.Response:
        if self.page_doc is None:
            raise ApiError(404, f"no dashboard ({page.DASHBOARD} is missing)")
        return web.Response(body=self.page_doc.body, content_type="text/html",
                            charset="utf-8",
                            headers={"Content-Security-Policy": self.page_doc.csp})

    async def get_status(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._snap().data, content_type="application/json")

    async def get_slots(self, _request: web.Request) -> web.Response:
        return json_response({"slots": self._doc().get("slots") or []})

    async def get_workers(self, _request: web.Request) -> web.Response:
        return json_response({"workers": self._doc().get("workers") or {}})

    async def get_params(self, _request: web.Request) -> web.Response:
        st = self._doc().get("strategy") or {}
        return json_response({"params": st.get("params"), "strategy": st.get("strategy"),
                              "sha256": st.get("sha256")})

    async def get_reloads(self, request: web.Request) -> web.Response:
        n = _int_param(request, "n", 50, 0, 1000)
        doc = self._doc()
        recs = await asyncio.to_thread(self.reload_log.tail, n)
        if recs is None:
            recs = [r for r in doc.get("reloads") or [] if isinstance(r, dict)][-n:] if n else []
        st = doc.get("strategy") or {}
        return json_response({"reloads": recs, "in_progress": st.get("reload_in_progress")})

    async def get_reload(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        if not ID_RE.fullmatch(rid):
            raise ApiError(404, "no such reload or command id")
        doc = self._doc()
        ack = commands.find_ack(doc, rid)
        rec = commands.find_reload(doc, rid)
        if rec is None:
            running = (doc.get("strategy") or {}).get("reload_in_progress")
            if isinstance(running, dict) and (running.get("id") == rid
                                              or running.get("command_id") == rid):
                return json_response({"ack": ack, "reload": running, "pending": True}, 202)
            rec = await asyncio.to_thread(self.reload_log.find, rid)
        if rec is not None:
            return json_response({"ack": ack, "reload": rec})
        if ack is not None and ack.get("result") is not None:
            return json_response({"ack": ack, "reload": None})
        if ack is not None or rid in self._sent:
            return json_response({"ack": ack, "reload": None, "pending": True}, 202)
        raise ApiError(404, f"no reload or command {rid}")

    async def get_positions(self, request: web.Request) -> web.Response:
        n = _int_param(request, "n", 20, 0, 500)
        summary = self._doc().get("positions")
        try:
            rows = await asyncio.to_thread(read_positions, self.run_dir / "journal.sqlite", n)
        except JournalUnavailable as e:
            raise ApiError(503, str(e)) from None
        return json_response({"summary": summary, **rows})

    async def get_candles(self, request: web.Request) -> web.Response:
        label = request.match_info["label"]
        n = _int_param(request, "n", 60, 1, MAX_CANDLES)
        if label not in BY_LABEL:
            raise ApiError(404, f"unknown slot label (known: {', '.join(BY_LABEL)})")
        try:
            out = await asyncio.to_thread(self.candles.last, label, n)
        except CandlesUnavailable as e:
            raise ApiError(503, str(e)) from None
        return json_response(out)

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        return await events.stream(request, self.watcher)

    async def get_metrics(self, request: web.Request) -> web.Response:
        api = {"requests": dict(self.requests), "auth_failures": self.auth.failures,
               "event_streams": self.watcher.clients}
        collector = metrics.StatusCollector(self.status, self.run_json, self.reload_log, api)
        body = await asyncio.to_thread(metrics.render, collector)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- commands ---------------------------------------------------------------------------

    async def post_command(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        body = await self._body(request)
        wait = _wait_param(request)
        if name == "params":
            name, args = commands.params_command(body)
        else:
            args = commands.command_args(name, body)
        key = commands.idempotency_key(request.headers.get("Idempotency-Key"))
        self._bot_alive()
        cid = await commands.send(self.run_dir / "control.json", name, args, key)
        self._sent[cid] = name
        while len(self._sent) > _REMEMBER_SENT:
            self._sent.popitem(last=False)
        if not wait:
            return json_response({"id": cid, "cmd": name}, 202)
        timeout = commands.ack_timeout(name, args)
        ack = await commands.wait_for_ack(self.status, cid, timeout, self.cfg.ack_poll_s)
        if ack is None:
            raise ApiError(504, f"no acknowledgement of {name} {cid} within {timeout:.0f} s "
                           "(is the bot running?)", id=cid)
        out: dict[str, Any] = {"ack": ack}
        if name in commands.RELOADS:
            out["reload"] = None
            if ack.get("result") in ("ok", "rolled_back"):
                out["reload"] = await commands.wait_for_reload(self.status, cid)
        code = {"ok": 200, "rolled_back": 409}.get(str(ack.get("result")), 422)
        return json_response(out, code)


API = web.AppKey("api", Api)


def build_app(cfg: ApiConfig, token: str) -> web.Application:
    api = Api(cfg, token)
    app = web.Application(client_max_size=cfg.max_body,
                          middlewares=[json_errors, api.auth.middleware])
    app[MAX_BODY] = cfg.max_body
    app[REQUESTS] = api.requests
    app[API] = api
    app.on_startup.append(api.on_startup)
    app.on_shutdown.append(api.on_shutdown)
    app.on_cleanup.append(api.on_cleanup)
    app.on_response_prepare.append(api.on_prepare)
    r = app.router
    r.add_get("/", api.page)
    r.add_get("/api/status", api.get_status)
    r.add_get("/api/slots", api.get_slots)
    r.add_get("/api/workers", api.get_workers)
    r.add_get("/api/reloads", api.get_reloads)
    r.add_get("/api/reloads/{id}", api.get_reload)
    r.add_get("/api/positions", api.get_positions)
    r.add_get("/api/params", api.get_params)
    r.add_get("/api/candles/{label}", api.get_candles)
    r.add_get("/api/events", api.get_events, allow_head=False)
    r.add_get("/metrics", api.get_metrics)
    r.add_post("/api/params", api.post_command)
    for name in dict.fromkeys([*COMMAND_ROUTES, *COMMANDS]):
        if name != "params" and re.fullmatch(r"[a-z_]+", name):
            r.add_post(f"/api/{name}", api.post_command)
    return app

