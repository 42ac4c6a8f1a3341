"""Federated MoPs on Flower: the run config, client partitions, the ServerApp / ClientApp and their launcher."""
