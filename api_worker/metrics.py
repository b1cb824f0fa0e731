"""GET /metrics: Prometheus text format, built at scrape time from the bot's own files.

:class:`StatusCollector` reads the current status.json (through the shared
:class:`~api_worker.reader.JsonFile`, so a scrape parses nothing the SSE stream has not),
reloads.jsonl (counted incrementally) and the sizes of the run's /dev/shm segments. There is
no background thread and no state of its own: a collector is made per scrape, with a copy of
the API's own request counters, and everything else comes from the files. Metrics whose
source is missing (no feed row yet, no reload with a handoff) are left out rather than
reported as 0. docs/api.md lists every metric.

Evaluation time is a histogram (the strategy worker's per-bucket counts, via status.json);
the feed's latency p50/p99 and the active lane's tick-to-evaluated median are gauges with a
``quantile`` label: only those summaries exist upstream.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from api_worker.reader import JsonFile, ReloadLog
from state.segment import PREFIX, SHM_DIR

Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
NS = "noblink"
# keys the active lane's evaluation p50 may appear under in status.json, and their unit (s)
EVAL_P50_KEYS = (("eval_p50_ms", 1e-3), ("lat_p50_ms", 1e-3), ("latency_p50_ms", 1e-3),
                 ("lat_p50_ns", 1e-9), ("eval_p50_ns", 1e-9))
FEED_COUNTERS = ("messages", "reconnects", "gaps_filled", "parse_errors", "stale_episodes",
                 "rest_errors", "scan_errors", "backfilled", "rotations")


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        f = float(v)
        return f if f == f else None
    return None


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


class _Families:
    """Collects metric families; a sample whose value is missing is left out."""

    def __init__(self) -> None:
        self._fams: dict[str, Metric] = {}

    def add(self, kind: str, name: str, doc: str, value: Any,
            labels: dict[str, str] | None = None, scale: float = 1.0) -> None:
        v = _num(value)
        if v is None:
            return
        labels = labels or {}
        fam = self._fams.get(name)
        if fam is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = self._fams[name] = cls(f"{NS}_{name}", doc, labels=list(labels))
        fam.add_metric(list(labels.values()), v * scale)

    def gauge(self, name: str, doc: str, value: Any, labels: dict[str, str] | None = None,
              scale: float = 1.0) -> None:
        self.add("gauge", name, doc, value, labels, scale)

    def counter(self, name: str, doc: str, value: Any,
                labels: dict[str, str] | None = None) -> None:
        self.add("counter", name, doc, value, labels)

    def histogram(self, h: dict[str, Any]) -> None:
        """The active worker's 16-slot evaluation time (status: strategy.lanes.N.eval_hist:
        per-bucket counts, bucket bounds in ms, the sum): cumulative buckets in seconds."""
        bounds, counts, total = h.get("le_ms"), h.get("counts"), _num(h.get("sum_ms"))
        if not (isinstance(bounds, list) and isinstance(counts, list) and total is not None
                and len(counts) == len(bounds) + 1
                and all(_num(x) is not None for x in [*bounds, *counts])):
            return
        running, buckets = 0.0, []
        for le, n in zip([*(f"{b / 1000:g}" for b in bounds), "+Inf"], counts, strict=True):
            running += float(n)
            buckets.append((le, running))
        self._fams["evaluation_seconds"] = HistogramMetricFamily(
            f"{NS}_evaluation_seconds", "time to evaluate every slot of a tick (active lane)",
            buckets=buckets, sum_value=total / 1000)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._fams.values())


def shm_bytes(run_id: str, shm_dir: Path = SHM_DIR) -> int:
    total = 0
    for p in Path(shm_dir).glob(f"{PREFIX}{run_id}-*"):
        with contextlib.suppress(OSError):  # unlinked between glob and stat
            total += p.stat().st_size
    return total


class StatusCollector(Collector):
    def __init__(self, status: JsonFile, run_json: JsonFile, reloads: ReloadLog,
                 api: dict[str, Any] | None = None) -> None:
        self.status = status
        self.run_json = run_json
        self.reloads = reloads
        self.api = api

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        doc = self.status.doc()
        f.gauge("status_up", "1 if status.json could be read", 1 if doc is not None else 0)
        if doc is not None:
            self._bot(f, doc)
            self._workers(f, _dict(doc.get("workers")))
            self._reloads(f, doc)
            self._feed(f, _dict(doc.get("feed")))
            self._positions(f, _dict(doc.get("positions")))
            self._eval(f, _dict(doc.get("strategy")))
        run = self.run_json.doc()
        if run is not None and isinstance(run.get("run_id"), str):
            f.gauge("shm_bytes", "bytes of the run's /dev/shm segments",
                    shm_bytes(run["run_id"], Path(str(run.get("shm_dir") or SHM_DIR))))
        if self.api is not None:
            self._api(f, self.api)
        yield from f

    @staticmethod
    def _bot(f: _Families, doc: dict[str, Any]) -> None:
        written = _num(doc.get("written_at"))
        if written is not None:
            f.gauge("status_age_seconds", "age of status.json", time.time() - written)
        f.counter("ticks", "ticks published in this run", doc.get("tick"))
        f.gauge("tick_age_seconds", "age of the last tick", doc.get("tick_age_s"))
        f.gauge("active_epoch", "the strategy epoch allowed to trade", doc.get("active_epoch"))
        f.gauge("paused", "1 when paused", doc.get("paused"))

    @staticmethod
    def _workers(f: _Families, workers: dict[str, Any]) -> None:
        for name, w in workers.items():
            w = _dict(w)
            lab = {"worker": str(name)}
            f.gauge("worker_up", "1 when the worker process is running",
                    1 if w.get("pid") else 0, lab)
            f.counter("worker_restarts", "restarts of this worker", w.get("restarts"), lab)
            f.gauge("worker_rss_bytes", "resident memory", w.get("rss_mb"), lab, 2**20)
            f.gauge("worker_cpu_percent", "CPU use since the previous status write",
                    w.get("cpu_pct"), lab)
            f.gauge("worker_heartbeat_age_seconds", "age of the worker's last heartbeat",
                    w.get("heartbeat_age_ms"), lab, 1e-3)

    def _reloads(self, f: _Families, doc: dict[str, Any]) -> None:
        recs = [r for r in doc.get("reloads") or [] if isinstance(r, dict)]
        counts = self.reloads.counts()
        if counts is None:                  # no reloads.jsonl: the last 50 in status.json
            counts = Counter(str(r.get("result")) for r in recs)
        for result, n in sorted(counts.items()):
            f.counter("reloads", "reloads by result", n, {"result": result})
        st = _dict(doc.get("strategy"))
        f.gauge("reload_in_progress", "1 while a reload runs",
                1 if st.get("reload_in_progress") else 0)
        if not recs:
            return
        last = recs[-1]
        for phase, ms in sorted(_dict(last.get("phases_ms")).items()):
            f.gauge("last_reload_phase_seconds", "phase durations of the last reload", ms,
                    {"phase": str(phase)}, 1e-3)
        f.gauge("last_reload_handoff_seconds", "drain request to flip, last reload",
                last.get("handoff_ms"), scale=1e-3)
        f.gauge("last_reload_command_to_active_seconds", "command to flip, last reload",
                last.get("command_to_active_ms"), scale=1e-3)

    @staticmethod
    def _feed(f: _Families, feed: dict[str, Any]) -> None:
        for key in FEED_COUNTERS:
            f.counter(f"feed_{key}", f"feed {key.replace('_', ' ')}", feed.get(key))
        f.gauge("feed_connected", "1 while the Binance stream is up", feed.get("connected"))
        f.gauge("feed_last_message_age_seconds", "age of the feed's last message",
                feed.get("last_msg_age_ms"), scale=1e-3)
        for q, key in (("0.5", "latency_p50_us"), ("0.99", "latency_p99_us")):
            f.gauge("feed_latency_seconds", "frame receive-to-publish latency quantiles",
                    feed.get(key), {"quantile": q}, 1e-6)

    @staticmethod
    def _positions(f: _Families, pos: dict[str, Any]) -> None:
        for key, doc in (("intents", "intents received"), ("orders", "orders placed"),
                         ("settled", "positions settled"), ("wins", "settled wins"),
                         ("losses", "settled losses"), ("mismatches", "reconcile mismatches")):
            f.counter(key, doc, pos.get(key))
        for reason, n in sorted(_dict(pos.get("rejected")).items()):
            f.counter("rejections", "intents rejected, by reason", n, {"reason": str(reason)})
        f.gauge("open_positions", "pending and open positions", pos.get("open_positions"))
        f.gauge("exposure_usd", "dollars in pending and open positions", pos.get("exposure"))
        f.gauge("pnl_usd", "realised PnL after fees", pos.get("pnl"))
        f.gauge("fees_usd", "fees paid", pos.get("fees"))
        f.gauge("streak", "+n wins / -n losses in a row", pos.get("streak"))
        for window, key in (("100", "win_rate_100"), ("all", "win_rate_all")):
            f.gauge("win_rate", "wins / settled", pos.get(key), {"window": window})

    @staticmethod
    def _eval(f: _Families, st: dict[str, Any]) -> None:
        lane = _dict(_dict(st.get("lanes")).get(str(st.get("active_lane"))))
        f.histogram(_dict(lane.get("eval_hist")))
        for key, scale in EVAL_P50_KEYS:
            if _num(lane.get(key)) is not None:
                f.gauge("evaluation_latency_seconds", "tick published to all slots evaluated, "
                        "active lane", lane[key], {"quantile": "0.5"}, scale)
                return

    @staticmethod
    def _api(f: _Families, api: dict[str, Any]) -> None:
        for code, n in sorted(_dict(api.get("requests")).items()):
            f.counter("api_requests", "API answers by status code", n, {"code": str(code)})
        f.counter("api_auth_failures", "API requests refused with 401/403",
                  api.get("auth_failures"))
        f.gauge("api_event_streams", "open SSE streams", api.get("event_streams"))


def render(collector: StatusCollector) -> bytes:
    """The exposition text of one scrape (run it in a thread: it reads files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
