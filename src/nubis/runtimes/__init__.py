"""Language runtimes: how to build a function's environment and how to start its workers."""
