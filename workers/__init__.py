"""Lethe job side: Celery tasks, the job modules (workers/jobs/), and the pure-PyTorch engine."""
