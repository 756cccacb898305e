"""A replica's workload identity at start: its tokens, its secrets, its database credentials (session.py)."""
