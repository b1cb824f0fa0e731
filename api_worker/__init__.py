"""api_worker: Mission Control's HTTP API (JSON routes, Server-Sent Events, Prometheus
metrics, the dashboard page), as its own process.

Why its own process: a slow client, a bug in a handler or a flood of requests can only ever
stall or crash this process, never the supervisor's loop or a trading process. It talks to
the bot through exactly the file contract the ``noblink`` CLI uses: it reads status.json
(and run.json, reloads.jsonl, the journal and the feed's windows table, all read-only) and
writes commands into control.json with :func:`supervisor.control_file.append_command`, so
every command is acknowledged the same way in status.json whichever way it came. Killing it
changes nothing for the bot. See docs/api.md.
"""
