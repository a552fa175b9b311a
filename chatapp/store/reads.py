"""Where each user has read up to in each room, and the rooms they muted: kept by the server,
so they follow the user to every device.

A read position costs one hash field per room per user and only moves forward
(``set_read.lua``); each move is told to every worker over the control channel, so the
user's open streams carry it to their other tabs and devices (``event: read``).
"""

from chatapp.core import control
from chatapp.core.ids import StreamId
from chatapp.store import keys
from chatapp.store.lua import lua_script


class ReadPositions:
    def __init__(self, redis, broker):
        self.redis = redis
        self.broker = broker
        self._set = redis.register_script(lua_script("set_read"))

    def mark(self, user, room, at):
        """``user`` has read ``room`` up to ``at``; return the stored position (never older
        than before). A move is told to the user's streams everywhere."""
        stored, moved = self._set([keys.user_reads(user)], [room, str(at)])
        stored = StreamId.from_bytes(stored)
        if moved:
            self.broker.publish_control(control.read_moved(user, room, stored))
        return stored

    def positions(self, user):
        """``{room: id}`` of every room ``user`` has a read position in."""
        found = self.redis.hgetall(keys.user_reads(user))
        return {room.decode(): StreamId.from_bytes(at) for room, at in found.items()}

    def muted(self, user):
        """The rooms ``user`` muted."""
        return {room.decode() for room in self.redis.smembers(keys.user_muted(user))}

    def mute(self, user, room, muted):
        if muted:
            self.redis.sadd(keys.user_muted(user), room)
        else:
            self.redis.srem(keys.user_muted(user), room)
