"""The Nuclio dashboard REST API (NUCLIO.md §4), as Nubis serves it."""
