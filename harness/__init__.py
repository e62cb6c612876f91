"""Run a real `bentoml serve` of this service from outside it: shared by the tests and the
benchmarks (neither imports the other). Not part of the bento."""
