from pathlib import Path

import pytest

from core.errors import StrategyError
from strategy_worker.loader import load_strategy

GOOD = '''
SCHEMA_VERSION = 2
class Strategy:
    def __init__(self, params): self.n = params.get("n", 0)
    def evaluate(self, view): return None
    def get_state(self): return {"n": self.n}
    def set_state(self, state): self.n = state["n"]
def migrate(old, state):
    if old == 1:
        return {"n": state["count"]}
    raise ValueError("unknown")
'''


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "strat.py"
    p.write_text(text)
    return p


def test_good_strategy_loads_and_migrates(tmp_path: Path) -> None:
    s = load_strategy(write(tmp_path, GOOD), {"n": 3})
    assert s.schema_version == 2 and s.instance.get_state() == {"n": 3}
    assert s.migrate(1, {"count": 7}) == {"n": 7}
    assert s.migrate(2, {"n": 1}) == {"n": 1}
    with pytest.raises(StrategyError, match="migrate"):
        s.migrate(0, {})


@pytest.mark.parametrize("text, match", [
    ("def broken(:\n", "SyntaxError"),
    ("import no_such_module_xyz\n", "ModuleNotFoundError"),
    ("SCHEMA_VERSION = 1\n", "no class Strategy"),
    ("class Strategy:\n    def __init__(self, p): pass\n", "SCHEMA_VERSION"),
    ("SCHEMA_VERSION = 1\nclass Strategy:\n    def __init__(self, p): raise RuntimeError('x')\n",
     "RuntimeError"),
    ("SCHEMA_VERSION = 1\nclass Strategy:\n    def __init__(self, p): pass\n", "evaluate"),
])
def test_broken_strategies_become_strategy_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        load_strategy(write(tmp_path, text))


def test_each_load_is_a_fresh_module(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    a, b = load_strategy(p), load_strategy(p)
    assert a.module is not b.module and a.module.__name__ != b.module.__name__


def test_shipped_strategy_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    s = load_strategy(root / "strategies" / "momentum.py")
    assert s.instance.get_state() == {"history": {}}
