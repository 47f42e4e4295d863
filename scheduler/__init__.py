"""Switchyard control plane: storage, REST API, CLI, predictor, optimizer, tick and dispatch."""
