"""Operator actions: kick and ban, over the JSON API (admins only) and the ``flask`` CLI.

Admins are named by ``CHAT_ADMINS``. A kick ends every session of the user and
closes their streams and long-polls on every worker and host (through the
control channel every hub listens to). A ban also refuses their logins and
HTTP Basic requests until it is lifted.
"""

import functools

import click
from flask import Blueprint, jsonify

from chatapp.core import control
from chatapp.core.reasons import Ending
from chatapp.ops.errors import Forbidden, NotFound
from chatapp.web.auth import current_user, end_user_sessions, login_required
from chatapp.web.context import services

bp = Blueprint("admin", __name__, url_prefix="/api/admin", cli_group="users")


def kick(user, reason=Ending.KICKED):
    """End ``user``'s sessions and streams everywhere; return the sessions ended."""
    return end_user_sessions(user, reason)


def set_banned(user, banned):
    if banned:  # sessions first: ending them only frees memory, so it works on a full store too
        kick(user, Ending.BANNED)
    services().users.set_banned(user, banned)
    if banned:
        # Again, now that the ban is written: a worker that checked the account between the
        # kick and the write would trust it (chatapp.accounts.users.trust_while), and a stream opened
        # in between would stay open.
        services().broker.publish_control(control.end_streams(Ending.BANNED, user=user))


def _existing(name):
    if not services().users.exists(name):
        raise NotFound(f"No user named {name[:32]!r}.", code="unknown_user")
    return name


def admin_required(view):
    @functools.wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not services().users.is_admin(current_user()):
            raise Forbidden("Only admins may do that.", code="not_admin")
        return view(*args, **kwargs)

    return wrapped


@bp.post("/users/<name>/kick")
@admin_required
def kick_user(name):
    """End every session and open stream of a user, on every worker and host."""
    return jsonify(user=name, sessions_ended=kick(_existing(name)))


@bp.post("/users/<name>/ban")
@admin_required
def ban_user(name):
    """Ban a user: kicked now, and no login or Basic auth until unbanned."""
    set_banned(_existing(name), True)
    return jsonify(user=name, banned=True)


@bp.delete("/users/<name>/ban")
@admin_required
def unban_user(name):
    """Lift a ban."""
    set_banned(_existing(name), False)
    return jsonify(user=name, banned=False)


def _cli_user(name):
    if not services().users.exists(name):
        raise click.ClickException(f"no user named {name!r}")
    return name


@bp.cli.command("create")
@click.argument("name")
@click.password_option(help="The password (asked for, twice, when not given).")
def create_command(name, password):
    """Create user NAME, also one reserved by CHAT_ADMINS."""
    from chatapp.ops.errors import ChatError

    try:
        services().users.create(name, password, reserved_ok=True)
        services().memberships.join_default(name)
    except ChatError as exc:
        raise click.ClickException(exc.message) from None
    admin = " (an admin)" if services().users.is_admin(name) else ""
    click.echo(f"created {name}{admin}")


@bp.cli.command("kick")
@click.argument("name")
def kick_command(name):
    """End every session and stream of user NAME."""
    ended = kick(_cli_user(name))
    click.echo(f"kicked {name}: {ended} session(s) ended; their streams close on every worker")


@bp.cli.command("ban")
@click.argument("name")
def ban_command(name):
    """Ban user NAME (and kick them)."""
    set_banned(_cli_user(name), True)
    click.echo(f"banned {name}")


@bp.cli.command("unban")
@click.argument("name")
def unban_command(name):
    """Lift the ban on user NAME."""
    set_banned(_cli_user(name), False)
    click.echo(f"unbanned {name}")


