"""Language runtimes: how to build a function's artifact and how to start its workers
(`base.Runtime`); `registry` picks one by `spec.runtime` (docs/plugins.md)."""
