"""Executors: the one interface behind which orders reach an exchange (or a paper book)."""
