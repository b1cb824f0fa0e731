"""Pieces every noblink process shares: the clock, the error policy, configuration, logging."""
