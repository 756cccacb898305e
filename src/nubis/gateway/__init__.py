"""The gateway: every function at its path (`/<function>/...`), on the processor's HTTP core.

A process of its own (`nubis gateway`, started and supervised by `nubis server`): it reads the
routing table from the store and proxies requests to the function's replicas, so it keeps serving
while the API process is down. See DESIGN.md (gateway) and issue 9.
"""
