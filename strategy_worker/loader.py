"""Load a strategy file as a fresh module, and turn every failure into StrategyError.

Each load gets a new, unique module name, so nothing of a previous version lingers
(``importlib.reload`` keeps old names and old objects alive; this does not reuse anything).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from core.errors import StrategyError

_counter = itertools.count(1)


@dataclass
class LoadedStrategy:
    path: Path
    module: ModuleType
    schema_version: int
    instance: Any
    params: dict

    def new_instance(self) -> Any:
        """A fresh ``Strategy(params)`` of this module (the handoff restores into one, so
        nothing a verification run did to ``instance`` leaks into trading)."""
        try:
            return self.module.Strategy(dict(self.params))
        except Exception as e:
            raise StrategyError(f"{self.path.name}: Strategy() failed: {e!r}") from e

    def migrate(self, old_version: int, state: dict) -> dict:
        """Bring a snapshot written by ``old_version`` to this SCHEMA_VERSION."""
        if old_version == self.schema_version:
            return state
        fn = getattr(self.module, "migrate", None)
        if fn is None:
            raise StrategyError(f"{self.path.name}: snapshot schema {old_version} != "
                                f"{self.schema_version} and the strategy has no migrate()")
        try:
            new = fn(old_version, state)
        except Exception as e:
            raise StrategyError(f"{self.path.name}: migrate({old_version}) failed: {e!r}") from e
        if not isinstance(new, dict):
            raise StrategyError(f"{self.path.name}: migrate() returned {type(new).__name__}")
        return new


def load_strategy(path: Path, params: dict | None = None) -> LoadedStrategy:
    path = Path(path)
    if not path.is_file():
        raise StrategyError(f"strategy file {path} does not exist")
    name = f"noblink_strategy_{path.stem}_{next(_counter)}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise StrategyError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cls = getattr(module, "Strategy", None)
        if cls is None:
            raise StrategyError(f"{path.name} defines no class Strategy")
        version = getattr(module, "SCHEMA_VERSION", None)
        if not isinstance(version, int):
            raise StrategyError(f"{path.name}: SCHEMA_VERSION must be an int")
        instance = cls(dict(params or {}))
        for method in ("evaluate", "get_state", "set_state"):
            if not callable(getattr(instance, method, None)):
                raise StrategyError(f"{path.name}: Strategy has no {method}()")
    except StrategyError:
        sys.modules.pop(name, None)
        raise
    except Exception as e:   # syntax errors, import errors, a raising __init__: all the same
        sys.modules.pop(name, None)
        raise StrategyError(f"{path.name} failed to load: {type(e).__name__}: {e}") from e
    return LoadedStrategy(path, module, version, instance, dict(params or {}))
