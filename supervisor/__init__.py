"""noblink supervisor package."""
