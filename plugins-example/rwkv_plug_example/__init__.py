"""An example rwkv-plug plugin package."""
