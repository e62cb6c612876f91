"""Serving: a generation request's way from validation to its last byte (admission with its fair
queue and classes, the circuit breaker, the lifecycle, grammars, interrupts); imports core, edge
and the vLLM adapter."""
