"""The control channel as one worker hears it (``chat:control``, :mod:`chatapp.core.control`).

It carries what must reach every worker at once: a session or a user's sessions
ended (logout, kick, ban, password change) and a user joined or left a room. It
is Pub/Sub, so a message can be missed while the link is down; what is cached on
its word (the trust in a verified HTTP Basic credential) is kept only within an
*epoch*, a stretch of time during which the channel was subscribed without a
break, and a reconnect makes every stream re-check its session (invariant 13).
"""

import logging

from chatapp.core import control
from chatapp.core.control import EndStreams, MembershipChange
from chatapp.ops.errors import ChatError

log = logging.getLogger(__name__)


class ControlChannel:
    """Acts on control messages through the hub's callbacks: ``end_streams(reason, user, sid)``,
    ``membership_changed(user, room, at)`` and ``read_moved(user, room, at)``."""

    def __init__(self, *, end_streams, membership_changed, read_moved):
        self._end_streams = end_streams
        self._membership_changed = membership_changed
        self._read_moved = read_moved
        self._user_watchers = []  # called with a user whose sessions ended (logout everywhere, ban...)
        # Control messages heard since the channel's last subscription; not live: not subscribed
        # now, so whatever is cached on their word can't be trusted.
        self._epoch = 0
        self._live = False

    def epoch(self):
        """An epoch that stays the same while no control message can have been missed, or None
        when that can't be said. Caches that a control message invalidates keep entries only
        within one epoch."""
        return self._epoch if self._live else None

    def watch_users(self, callback):
        """Call ``callback(user)`` when a control message ends a user's sessions or streams."""
        self._user_watchers.append(callback)

    def subscribed(self):
        """The channel's subscription is confirmed (first, or after a break): a new epoch."""
        self._epoch += 1
        self._live = True

    def lost(self):
        """The link carrying the channel dropped: messages may be missed from now on."""
        self._live = False

    def on_message(self, payload):
        try:
            message = control.decode(payload)
            if isinstance(message, EndStreams):
                if message.user:
                    for callback in self._user_watchers:
                        callback(message.user)
                self._end_streams(message.reason, message.user, message.sid)
            elif isinstance(message, MembershipChange):
                self._membership_changed(message.user, message.room, message.at)
            else:
                self._read_moved(message.user, message.room, message.at)
        except (ValueError, ChatError):
            log.error("hub: ignoring malformed control message %r", payload[:200])
