"""Deterministic image sets for the demo, tests and benchmarks: `synthetic` smears, and an
`unfamiliar` (out-of-distribution) set built from real fields."""
