"""A momentum strategy: the file a strategy author edits, then reloads.

Late in a window, if the reference price (Chainlink, what the market resolves on) has moved
clearly away from the price to beat, the recent moves agree, and the latest 1m candle
(Binance's, the fast signal; built from the reference for HYPE) points the same way
(momentum), buy the side it is moving to, but only below a price that leaves an edge after
the taker fee. No price to beat, or a stale
reference: no trade (the market would be decided on a number we do not know). The signal
history (recent moves per slot) is the state that must survive a reload: it is snapshotted
every cycle and handed to the successor.
"""

from __future__ import annotations

from strategy_worker.api import Decision, SlotView

SCHEMA_VERSION = 1


class Strategy:
    def __init__(self, params: dict) -> None:
        self.entry_window = float(params.get("entry_window", 0.35))   # last 35% of the window
        self.min_move = float(params.get("min_move", 0.0008))         # 0.08% from the open
        self.max_price = float(params.get("max_price", 0.80))
        self.confirmations = int(params.get("confirmations", 2))
        self.history: dict[str, list[float]] = {}                     # slot label -> moves

    def evaluate(self, view: SlotView) -> Decision | None:
        candles = view.candles.get("1m")
        if candles is None or len(candles) < 3 or not view.accepting:
            return None
        move = view.move_from_price_to_beat
        if move is None:
            return None
        # The last closed 1m candle: Binance's, or for a `reference` asset (HYPE) one built
        # from the same Chainlink series as the move, a weaker confirmation (docs/markets.md).
        fast = float(candles["close"][-1]) - float(candles["open"][-1])
        hist = self.history.setdefault(view.label, [])
        hist.append(move)
        del hist[:-20]
        if view.seconds_left > view.window_s * self.entry_window:
            return None
        recent = hist[-self.confirmations:]
        if len(recent) < self.confirmations or abs(move) < self.min_move:
            return None
        if all(m > 0 for m in recent) and fast >= 0:
            side, book = "Up", view.up
        elif all(m < 0 for m in recent) and fast <= 0:
            side, book = "Down", view.down
        else:
            return None
        if not 0 < book.ask <= self.max_price:
            return None
        return Decision(side, self.max_price, f"mom {move:+.4f}")

    def get_state(self) -> dict:
        return {"history": self.history}

    def set_state(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}
