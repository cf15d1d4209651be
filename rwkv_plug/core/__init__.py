"""The small core: hook specs, plugin manager, registries, config and CLI."""
