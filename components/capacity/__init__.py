"""The engine's capacity: admission (the fair queue and classes), the circuit breaker and a
generation's lifecycle through them; imports only core."""
