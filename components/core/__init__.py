"""Core: settings, the error taxonomy, the request context, metrics, logs and host facts; imports
nothing else of ours."""
