"""noblink state package."""
