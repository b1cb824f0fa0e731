"""noblink feed_worker package."""
