"""Lethe job side: Celery tasks, the pipeline, and the pure-PyTorch engine."""
