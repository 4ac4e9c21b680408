"""The notes domain's ``shuiwu notes`` sub-commands."""

from __future__ import annotations

import typer

notes_app = typer.Typer(help="Reading notes.", no_args_is_help=True)


@notes_app.command("check")
def check_note(ctx: typer.Context, text: str) -> None:
    """Print the note as it would be kept, or why it is refused."""
    from tests.sample_domain.service import EmptyNote, checked_note
    from tests.sample_domain.settings import NotesSettings

    try:
        typer.echo(checked_note(text, max_chars=NotesSettings().max_chars))
    except EmptyNote as refusal:
        typer.echo(refusal.message, err=True)
        raise typer.Exit(1) from None
