"""Dataset loaders: the public hub copy by default, or a local data root for offline clusters."""
