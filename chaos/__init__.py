"""`make chaos`: kill -9, sim faults, broken strategies and hostile input against a real bot
on the sim, then check that nothing was lost, duplicated or left behind (docs/chaos.md).

- row.py: options, one result row per scenario, the restart-budget pacing
- scenarios.py: the registry, the kill scenarios and the runner (a fresh `noblink run` each,
  tests/supervisor/botctl.py's Bot); restarts.py, simfaults.py, journaled.py, broken.py,
  hostile.py, soak.py: the other scenarios
- checks.py: what must hold after every fault and after the clean stop; exchange.py: the
  candle windows and the ledger against the sim, and resources
- __main__.py: options, the table, bench/results/chaos.json, the exit code
"""
