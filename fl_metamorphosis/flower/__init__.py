"""Everything in the library that imports Flower: the device protocol (typed messages), flwr-datasets partitioning."""
