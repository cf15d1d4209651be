"""Judging a model: loss by token position over long samples, and the passkey-retrieval probe."""
