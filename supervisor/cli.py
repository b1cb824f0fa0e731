"""The `noblink` command: one entry point, a subcommand per concern."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: noblink {run,sim,sim-fault,inspect} ...")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "sim":
        from sim.cli import main as sim_main
        return sim_main(rest)
    if cmd == "sim-fault":
        from sim.cli import fault_main
        return fault_main(rest)
    print(f"noblink: unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
