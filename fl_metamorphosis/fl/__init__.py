"""The thin Flower-side adapter of the library (flwr-datasets partitioning, record conversion)."""
