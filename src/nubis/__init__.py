"""Nubis: a fast, Nuclio-compatible serverless platform."""

__version__ = "0.1.0"
