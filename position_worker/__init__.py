"""noblink position_worker package."""
