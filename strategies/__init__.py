"""noblink strategies package."""
