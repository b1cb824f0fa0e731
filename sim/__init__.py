"""noblink sim package."""
