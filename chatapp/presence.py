"""Presence: who has a live stream (or a recent long-poll) in a room, join/leave, typing.

Kept in Redis by ``lua/presence.lua`` so every worker and host agrees, with
expiry refreshed by each worker's hub, so a dead worker's users leave by
themselves (within ``CHAT_PRESENCE_TTL_SECS`` plus a sweep). Join, leave
(``event: presence``) and typing (``event: typing``) are live-only: never
stored, never replayed; a reconnecting client reloads the list.
"""

import logging
import uuid

from flask import Blueprint, current_app, jsonify

from . import keys
from .auth import current_user, login_required
from .broker import lua_script
from .ratelimit import enforce
from .rooms import current_rooms

log = logging.getLogger(__name__)

bp = Blueprint("presence", __name__, url_prefix="/api/rooms")

POLL_CONNECTION = "poll"  # one presence entry per long-polling user, refreshed by each poll


class Presence:
    def __init__(self, redis, config):
        self._script = redis.register_script(lua_script("presence"))
        self.ttl_ms = int(config["CHAT_PRESENCE_TTL_SECS"] * 1000)
        self.linger_ms = int(config["CHAT_PRESENCE_LINGER_SECS"] * 1000)
        self.refresh_secs = config["CHAT_PRESENCE_TTL_SECS"] / 3  # two refreshes may fail before expiry

    def _run(self, room, op, ttl_ms, members=()):
        users = self._script([keys.room_presence(room), keys.room_presence_users(room), keys.room_channel(room)],
                             [op, ttl_ms, room, *members])
        return [user.decode() for user in users]

    @staticmethod
    def member(user, connection=None):
        """A connection's entry; a new random one per stream."""
        return f"{user}:{connection or uuid.uuid4().hex}"

    def join(self, room, member):
        return self.join_many(room, [member])

    def join_many(self, room, members):
        return self._run(room, "join", self.ttl_ms, members)

    def leave_many(self, room, members):
        """Leave after the linger period, unless the user reconnects meanwhile."""
        return self._run(room, "leave", self.linger_ms, members)

    def tick(self, room, members=()):
        """Expire dead connections (announcing leaves) and refresh ``members``; return who is online."""
        return self._run(room, "tick", self.ttl_ms, members)


def current_presence():
    return current_app.extensions["chat.presence"]


@bp.get("/<room>/presence")
@login_required
def online(room):
    """Who is in the room now (each user once, however many tabs)."""
    current_rooms().require(room)
    return jsonify(room=room, users=current_presence().tick(room))


@bp.post("/<room>/typing")
@login_required
def typing(room):
    """Tell the room's readers that you are typing (live only, never stored)."""
    current_rooms().require(room)
    user = current_user()
    enforce("CHAT_RATE_TYPING", user)
    current_app.extensions["chat.broker"].signal(room, "typing", user)
    return jsonify(ok=True), 202
