"""`make chaos` (first version): kill -9 and reload storms against a real bot on the sim,
then check that nothing was lost, duplicated or left behind.

- scenarios.py: the faults, each on a fresh `noblink run` (tests/supervisor/botctl.py's Bot)
- checks.py: what must hold after every fault and after the clean stop
- __main__.py: options, the table, bench/results/chaos.json, the exit code
"""
