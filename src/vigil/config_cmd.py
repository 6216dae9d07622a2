"""`vigil config check FILE` and `vigil config show [FILE]`."""

from __future__ import annotations

import click

from . import config
from . import settings as st
from .encoding import as_text, display
from .errors import ConfigError


@click.group("config")
def config_cmd() -> None:
    """Check or show the config file (docs/config.md)."""


@config_cmd.command("check")
@click.argument("path", metavar="FILE")
def check(path: str) -> int | None:
    """Name every bad key and value of FILE, one line each; exit 1 if any."""
    name = display(as_text(path))
    try:
        config.read(path)
    except config.ConfigProblems as err:
        for problem in err.problems:
            click.echo(f"{name}: {problem}")
        click.echo(f"vigil: {name}: {len(err.problems)} problem(s)", err=True)
        return 1
    except ConfigError as err:
        click.echo(f"vigil: error: {err}", err=True)
        return 1
    click.echo(f"{name}: ok")
    return None


@config_cmd.command("show")
@click.argument("path", metavar="[FILE]", required=False)
def show(path: str | None) -> None:
    """Print the effective settings (FILE, default /etc/vigil/vigil.toml if
    it exists, over the defaults) as a config file."""
    settings = config.read(path or st.DEFAULT_PATH, missing_ok=path is None)
    click.echo(config.dump(settings), nl=False)
