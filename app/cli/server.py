"""Commands that run Lethe on this machine: migrate, demo, worker, serve."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.output import JSON, console, emit

KEEP_ALIVE_SECONDS = 75


def migrate(as_json: Annotated[bool, JSON] = False) -> None:
    """Bring the database to the newest schema."""
    from app import migrate as m
    from app.settings import get_settings

    m.upgrade()
    where = get_settings().sqlalchemy_url.split("@")[-1]
    emit({"database": where, "at_head": True}) if as_json else console.print(f"database at head: {where}")


def demo(as_json: Annotated[bool, JSON] = False,
         dataset: Annotated[str, typer.Option(help="digits (scikit-learn's, an .npz and an mlp) or fashion-mnist "
                                                   "(Debian's dataset-fashion-mnist as Parquet PNGs, a cnn)")
                            ] = "digits",
         size: Annotated[int | None, typer.Option(help="fashion-mnist: train images (default 1000; a quarter as "
                                                       "many test images)", min=10)] = None) -> None:
    """Register a demo dataset and its model, train and score it (idempotent)."""
    from app.demo import DEMOS, run_demo
    from workers.engine.fashion_mnist import FashionMNISTMissing

    if dataset not in DEMOS:
        raise typer.BadParameter(f"--dataset must be one of {', '.join(DEMOS)}")
    try:
        result = run_demo(dataset=dataset, size=size, echo=(lambda *_: None) if as_json else console.print)
    except FashionMNISTMissing as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        emit({k: v for k, v in result.items()})
    else:
        console.print(f"admin API key: [bold]{result['key']}[/bold]")


def worker(concurrency: Annotated[int, typer.Option(help="processes (1 per GPU is usual)")] = 1,
           loglevel: str = "INFO",
           quiet: Annotated[bool, typer.Option(help="no start-up banner, no running-as-root warning")] = False,
           ) -> None:
    """Run a Celery worker for unlearning, scoring and training jobs."""
    from workers.celery_app import celery

    pool = "solo" if concurrency == 1 else "prefork"
    if quiet:
        import warnings

        from celery.exceptions import SecurityWarning

        # Containers and CI run as root; the warning is for pickle, which Lethe's JSON-only workers never accept.
        warnings.filterwarnings("ignore", category=SecurityWarning)
    celery.worker_main([*(["--quiet"] if quiet else []), "worker", f"--pool={pool}", f"--concurrency={concurrency}",
                        "-Q", "lethe", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])


def serve(host: str = "127.0.0.1", port: int = 8000,
          no_worker: Annotated[bool, typer.Option("--no-worker", help="do not start a worker beside the API")] = False,
          workers: Annotated[int, typer.Option(help="uvicorn processes")] = 1,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
              "the embedded worker logs at INFO with Celery's banner (default: warnings only, no banner; "
              "also LETHE_VERBOSE=1)"))] = False) -> None:
    """Serve the API (and, by default, one worker process and the outbox relay)."""
    import uvicorn

    from app import embedded
    from app import migrate as m
    from app.demo import admin_key

    m.upgrade()
    with embedded.running(worker=not no_worker, verbose=verbose):
        key = admin_key()
        console.print(f"Lethe on http://{host}:{port}  (docs: /docs)   admin API key: [bold]{key}[/bold]\n"
                      f"try: curl -s -H 'Authorization: Bearer {key}' http://{host}:{port}/models/digits")
        # Keep idle connections longer than clients and proxies do (httpx 5 s, nginx 75 s): with uvicorn's 5 s
        # default a client reusing a connection just as the server closes it gets a ReadError mid-request.
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning",
                    timeout_keep_alive=KEEP_ALIVE_SECONDS)
