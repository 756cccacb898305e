"""The control plane: API, state store, reconciler."""
