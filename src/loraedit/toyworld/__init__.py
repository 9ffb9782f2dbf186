"""The toy world: synthetic videos with known edits and tiny Wan-architecture models that run on CPU."""
