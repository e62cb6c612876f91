"""The vLLM adapter: the only package that imports vLLM or reads its internals (engine, serving
bridge, hooks, scheduler, exception table); imports only core."""
