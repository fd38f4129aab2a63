"""The `lethe` command: serve, worker, migrate, demo, forget, job, status, keys, ledger.

One module per group of commands: `server` runs Lethe on this machine (serve, worker, migrate, demo), `remote`
talks to a running server over HTTP (forget, job, status), `keys` and `ledger` are the sub-command groups;
`output` holds the exit codes and what every command prints, `failures` turns any failure into one line and an
exit code.
"""

from __future__ import annotations

import typer

from app.cli import keys, ledger, remote, server
from app.cli.failures import LetheGroup
from app.cli.output import EXIT_CODES

cli = typer.Typer(cls=LetheGroup, help="Lethe: remove training data from deployed PyTorch models.", epilog=EXIT_CODES,
                  no_args_is_help=True, pretty_exceptions_enable=False)
for command in (server.migrate, server.demo, server.worker, server.serve, remote.forget, remote.job,
                remote.status):
    cli.command()(command)
cli.add_typer(keys.keys, name="keys")
cli.add_typer(ledger.ledger, name="ledger")


def main() -> None:
    typer.main.get_command(cli).main(prog_name="lethe")
