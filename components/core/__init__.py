"""Core: settings, the error taxonomy and its dialects, the route table, the request context,
metrics, logs and host facts; imports nothing else of ours."""
