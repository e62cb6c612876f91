"""Assembly: the runtime built at startup and taken down at shutdown, and the supervisor."""
