"""Triggers: each kind turns outside input into events for a worker pool (see registry.py)."""
