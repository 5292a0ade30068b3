"""Shared SQL migrations applied into every service's schema before its own (see migrations.py)."""
