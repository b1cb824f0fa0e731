"""reloads.jsonl: records appended at the end of a reload, probation outcomes as updates."""

from __future__ import annotations

from pathlib import Path

from api_worker.reader import ReloadLog
from supervisor import reloadlog


def test_updates_apply_to_their_record_for_every_reader(tmp_path: Path) -> None:
    reloadlog.append(tmp_path, {"id": "r1", "command_id": "c1", "result": "ok",
                                "probation": "running"})
    reloadlog.append(tmp_path, {"id": "r2", "command_id": "c2", "result": "rolled_back"})
    reloadlog.append(tmp_path, {"id": "r1", "update": {"probation": "passed"}})
    reloadlog.append(tmp_path, {"id": "gone", "update": {"probation": "failed: x"}})
    with open(tmp_path / reloadlog.FILE_NAME, "ab") as f:
        f.write(b"not json\n")
    recs = reloadlog.read_tail(tmp_path, 50)
    assert [(r["id"], r.get("probation")) for r in recs] == [("r1", "passed"), ("r2", None)]
    assert reloadlog.read_tail(tmp_path, 1) == [recs[-1]]

    log = ReloadLog(tmp_path / reloadlog.FILE_NAME)       # the API's reader
    assert log.counts() == {"ok": 1, "rolled_back": 1}     # update lines are not reloads
    assert log.find("c1")["probation"] == "passed" and log.find("r1")["result"] == "ok"
    assert [r["id"] for r in log.tail(50)] == ["r1", "r2"]
    assert log.tail(50)[0]["probation"] == "passed"


def test_the_api_tail_counts_records_not_update_lines(tmp_path: Path) -> None:
    for i in range(3):
        reloadlog.append(tmp_path, {"id": f"r{i}", "result": "ok", "probation": "running"})
        reloadlog.append(tmp_path, {"id": f"r{i}", "update": {"probation": "passed"}})
    log = ReloadLog(tmp_path / reloadlog.FILE_NAME)
    tail = log.tail(2, block=40)                     # small blocks: several reads back
    assert [(r["id"], r["probation"]) for r in tail] == [("r1", "passed"), ("r2", "passed")]
