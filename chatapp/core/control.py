"""The control channel's messages: one schema for the code that publishes them
(:class:`chatapp.store.broker.Broker`) and the code that acts on them (each worker's
:class:`chatapp.delivery.control.ControlChannel`).

Three kinds travel on ``chat:control``, as JSON objects told apart by their fields:

* :class:`EndStreams` ``{"reason", "user", "sid"}``: close the streams of ``user`` (every
  session) or of one session ``sid`` (logout, kick, ban, password change);
* :class:`MembershipChange` ``{"user", "room", "joined"}``: ``user`` joined ``room`` at the id
  ``joined``, or left it (``joined`` null); their multiplexed streams follow at once;
* :class:`ReadMoved` ``{"user", "room", "read"}``: ``user`` has read ``room`` up to ``read``;
  their multiplexed streams tell their tabs and devices (``event: read``).
"""

import json
from typing import NamedTuple

from chatapp.core.ids import StreamId


class EndStreams(NamedTuple):
    reason: str  # an Ending, told to the streams' clients
    user: str | None = None  # lowercase
    sid: str | None = None

    def encode(self):
        return json.dumps({"reason": self.reason, "user": self.user, "sid": self.sid})


class MembershipChange(NamedTuple):
    user: str  # lowercase
    room: str
    at: StreamId | None  # the join point, or None: left

    def encode(self):
        return json.dumps({"user": self.user, "room": self.room,
                           "joined": str(self.at) if self.at is not None else None})


class ReadMoved(NamedTuple):
    user: str  # lowercase
    room: str
    at: StreamId

    def encode(self):
        return json.dumps({"user": self.user, "room": self.room, "read": str(self.at)})


def end_streams(reason, *, user=None, sid=None):
    """The message that ends ``user``'s streams (every session) or session ``sid``'s."""
    return EndStreams(reason, user.lower() if user else None, sid)


def membership_change(user, room, at):
    """The message that ``user`` joined ``room`` at ``at`` (None: left it)."""
    return MembershipChange(user.lower(), room, at)


def read_moved(user, room, at):
    """The message that ``user`` has read ``room`` up to ``at``."""
    return ReadMoved(user.lower(), room, at)


def decode(payload):
    """An :class:`EndStreams`, a :class:`MembershipChange` or a :class:`ReadMoved`; ValueError if
    it is none of them."""
    try:
        fields = json.loads(payload)
        if "read" in fields:
            return ReadMoved(_text(fields["user"]), _text(fields["room"]), StreamId.parse(fields["read"]))
        if "joined" in fields:
            joined = fields["joined"]
            return MembershipChange(_text(fields["user"]), _text(fields["room"]),
                                    StreamId.parse(joined) if joined is not None else None)
        user, sid = fields.get("user"), fields.get("sid")
        return EndStreams(_text(fields["reason"]), _text(user) if user is not None else None,
                          _text(sid) if sid is not None else None)
    except ValueError:
        raise
    except Exception as exc:  # a field missing or of the wrong type, a bad id (BadRequest)
        raise ValueError(f"not a control message: {exc}") from None


def _text(value):
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value
