"""The edge: what a request meets before any engine work (access log, auth, limits, probes,
tracing, the keys policy, the shared stores); imports only core."""
