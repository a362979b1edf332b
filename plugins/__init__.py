"""Runtime adapters: each subpackage imports its runtime only when used."""
