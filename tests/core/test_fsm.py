import enum

import pytest

from core.fsm import InvalidTransition, StateMachine


class S(enum.IntEnum):
    A = 1
    B = 2
    C = 3


TABLE = {S.A: frozenset({S.B}), S.B: frozenset({S.C}), S.C: frozenset()}


def test_allowed_transitions_are_applied_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    seen = []
    m = StateMachine("t", S.A, TABLE, on_change=lambda o, n: seen.append((o, n)))
    caplog.set_level("INFO")
    m.to(S.B, "because")
    assert m.state == S.B and seen == [(S.A, S.B)]
    assert "A -> B (because)" in caplog.text


def test_illegal_transition_is_refused_and_state_kept() -> None:
    m = StateMachine("t", S.A, TABLE)
    with pytest.raises(InvalidTransition):
        m.to(S.C)
    assert m.state == S.A


def test_table_must_cover_every_state() -> None:
    with pytest.raises(ValueError, match="lacks"):
        StateMachine("t", S.A, {S.A: frozenset()})
