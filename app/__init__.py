"""Lethe HTTP side: FastAPI app, ledger, registry. Never imports torch."""
