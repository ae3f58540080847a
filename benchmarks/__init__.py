"""Model and server benchmarks. Never run as tests; `skipvit bench ...` runs them."""
