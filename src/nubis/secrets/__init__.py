"""Secrets of a tenant's projects: a local encrypted store or Vault, behind one interface (base.py)."""
