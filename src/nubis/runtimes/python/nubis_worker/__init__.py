"""Code that runs inside a function's worker process.

It runs in the function's own interpreter (Python 3.9 to 3.13), so it may use only the standard
library, msgpack and nuclio-sdk. The platform puts this package's parent directory on the
interpreter's PYTHONPATH; it is never installed into a function environment.
"""
