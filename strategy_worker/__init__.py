"""noblink strategy_worker package."""
