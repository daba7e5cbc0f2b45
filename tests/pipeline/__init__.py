"""navcache tests (a package, so test modules are named tests.<area>.test_x)."""
