"""Async orchestration over the store: engine, context, worker, host, reconciler."""
