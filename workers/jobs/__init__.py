"""One module per job kind (train, score, reference, calibrate, unlearn), run by workers.jobs.runner.

Each reads its inputs once into a frozen dataclass, calls the engine, and asks the app service that owns a row
for every state change (app.jobs.service for the job, app.forget.service for its requests, app.registry for
versions and scores, app.evidence for pools); none writes a status itself.
"""
