"""The Broker: each room's durable log (a Redis Stream) and its live channel.

This module owns every read and write of a room's stream; what it reads and
publishes are :mod:`chatapp.core.publication` values.
"""

import json

import redis
import redis.cluster

from chatapp.core.ids import ZERO, StreamId
from chatapp.core.publication import Publication, Reset
from chatapp.ops.errors import Forbidden, NotFound, NotReplicated, unknown_room
from chatapp.store import keys, topology
from chatapp.store.lua import is_cluster, lua_script, room_script, run_many

# What a 201 means (CHAT_DURABILITY): written on the primary; fsynced there (the
# embedded Redis runs appendfsync always); or on CHAT_DURABILITY_REPLICAS replicas.
PRIMARY, FSYNC, REPLICAS = "primary", "fsync", "replicas"
DURABILITY_MODES = (PRIMARY, FSYNC, REPLICAS)
POST = "post"  # append_publish.lua's operation for a message


_REFUSALS = {
    # An outsider of a private room or a DM gets what a room never created gets (invariant 15).
    "unknown_room": unknown_room,
    "room_archived": lambda room: Forbidden("This room is archived: it can be read, not written to.",
                                       code="room_archived"),
    "blocked": lambda room: Forbidden("This conversation is blocked: one of you blocked the other.", code="blocked"),
    "room_members_full": lambda room: Forbidden("This room has as many members as a room may have.",
                                           code="room_members_full"),
    "not_member": lambda room: NotFound("Not a member of this room.", code="not_member"),
    "unknown_message": lambda room: NotFound("No message with that id in this room (or it was deleted).",
                                             code="unknown_message"),
    "not_author": lambda room: Forbidden("Only its author edits a message.", code="not_author"),
    "edit_window_passed": lambda room: Forbidden("This message is too old to edit.", code="edit_window_passed"),
    "edit_limit": lambda room: Forbidden("This message has been edited as many times as a message may be.",
                                         code="edit_limit"),
    "not_allowed": lambda room: Forbidden("Only its author, the room's moderators or an operator delete a message.",
                                          code="not_allowed"),
}

class Broker:
    """Saves to history and publishes atomically per room; reads history back."""

    def __init__(self, redis, maxlen, idempotency_ttl, *, durability=PRIMARY, replicas=1, wait_ms=1000):
        self.redis = redis
        self.maxlen = maxlen
        self.idempotency_ttl = idempotency_ttl
        self.durability = durability
        self.replicas = replicas
        self.wait_ms = wait_ms
        self._append_publish = room_script(redis, "append_publish")
        self._count_unread = redis.register_script(lua_script("count_unread"))
        self._confirm = room_script(redis, "confirm")

    @property
    def waits_for_replicas(self):
        return self.durability == REPLICAS

    def publish(self, room, user, text, idempotency_key=None, mentions=()):
        """Append and publish a message; return ``(Publication, created)``.

        With an idempotency key seen before in this room for this user, nothing
        is written and the first message comes back with ``created`` False. A
        writer who may not write there (not a member of a private room or DM, an
        archived room, a blocked DM) is refused by the same script that appends.
        """
        fields = {"room": room, "user": user, "text": text}
        if idempotency_key:
            fields["client_id"] = idempotency_key  # lets the sender's page match its pending copy
        if mentions:
            fields["mentions"] = list(mentions)  # last: count_unread.lua finds it after the text
        return self.append(room, user, fields, POST, idempotency_key=idempotency_key)

    def edit(self, room, user, target, text, *, oldest_editable, max_edits):
        """Append an edit of the message ``target`` (its author's, ``oldest_editable`` or newer);
        return the edit's Publication."""
        publication, _ = self.append(room, user, {"room": room, "user": user, "kind": "edit", "target": str(target),
                                                  "text": text}, "edit", member=str(target), value=text,
                                     cap=max_edits, extra=[str(oldest_editable)])
        return publication

    def delete(self, room, user, target, *, moderates):
        """Append the deletion of the message ``target`` and take its text out of Redis (its entry,
        its edits, its idempotency record); return the deletion's Publication."""
        publication, _ = self.append(room, user, {"room": room, "user": user, "kind": "delete",
                                                  "target": str(target)}, "delete", member=str(target),
                                     extra=["1" if moderates else "0", keys.room_idempotency_prefix(room)])
        return publication

    def change(self, room, actor, fields, op, *, member="", value="", cap=0):
        """Apply a membership or room change (``op``: add, remove, role, title, archive) and
        append its entry ``fields`` in the same script; return the :class:`Publication`, or
        None if it changed nothing."""
        publication, created = self.append(room, actor, {"room": room, "user": actor, **fields}, op,
                                           member=member, value=value, cap=cap)
        return publication if created else None

    def append(self, room, writer, fields, op, *, member="", value="", cap=0, extra=(), idempotency_key=None):
        """Run ``append_publish.lua`` for ``op``; return ``(Publication or None, created)``."""
        names = [keys.room_log(room), keys.room_channel(room), keys.room_trimmed(room), keys.room_meta(room),
                 keys.room_members(room), keys.room_blockers(room), keys.room_edits(room)]
        if idempotency_key:
            names.append(keys.room_idempotency(room, writer, idempotency_key))
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        args = [body, self.maxlen, self.idempotency_ttl, "1" if self.waits_for_replicas else "0", writer.lower(),
                op, member, value, cap, *extra]
        if not self.waits_for_replicas:
            return _appended(room, *self._append_publish(names, args))
        names.append(keys.room_acked(room))
        # WAIT counts the replicas that have every earlier write of its connection, so it
        # goes after the script on the same connection: one pipeline, one round trip (on a
        # Cluster, on the room's node).
        def append_and_wait(client):
            pipe = client.pipeline(transaction=False)
            self._append_publish(names, args, client=pipe)
            pipe.execute_command("WAIT", self.replicas, self.wait_ms)
            return pipe.execute()

        (outcome, payload), acknowledged = self._on_node(keys.room_log(room), append_and_wait)
        publication, created = _appended(room, outcome, payload)
        if publication is None:
            return publication, created
        if acknowledged < self.replicas:
            # Stored, but a failover could still take it back: not acknowledged. Readers
            # don't see it yet; a retry with the same key returns this message, once safe.
            raise NotReplicated(f"The message reached {acknowledged} of {self.replicas} replicas in time; "
                                "retry (the same Idempotency-Key is safe).", headers={"Retry-After": "1"})
        self._confirm([keys.room_acked(room), keys.room_channel(room)], [str(publication.id)])
        return publication, created

    def _on_node(self, key, run):
        """``run(client)`` on the client of the node serving ``key``: the client itself, or on a
        Cluster a plain client of that node (for what must share one connection, or whose
        replies redis-py's cluster pipelines leave unparsed). A node that no longer serves the
        slot (MOVED, ASK) makes it read the slot map again and try once more; one that became
        a replica (READONLY) or is gone makes it read the map and fail (a retryable 503)."""
        if not is_cluster(self.redis):
            return run(self.redis)
        for attempt in (1, 2):
            node = self.redis.get_redis_connection(self.redis.get_node_from_key(key))
            try:
                return run(node)
            except (redis.exceptions.MovedError, redis.exceptions.AskError):
                self.redis.nodes_manager.initialize()
                if attempt == 2:
                    raise
            except (redis.exceptions.ReadOnlyError, redis.ConnectionError, redis.TimeoutError):
                self.redis.nodes_manager.initialize()
                raise
        raise AssertionError("unreachable")

    def primary_address(self):
        """Where this broker's writes go now (see :func:`chatapp.store.topology.address`)."""
        return topology.address(self.redis)

    def node_address(self, room):
        """On a Cluster: ``(host, port)`` of the node serving ``room`` now."""
        node = self.redis.get_node_from_key(keys.room_log(room))
        return node.host, node.port

    def replicated(self, room):
        """With replica acknowledgement: a write (in the room's slot) and a WAIT on one
        connection. True if enough replicas have everything the server ran before it."""
        def probe(client):
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.room_probe(room), b"1", px=60_000)
            pipe.execute_command("WAIT", self.replicas, self.wait_ms)
            return pipe.execute()[1]

        return self._on_node(keys.room_log(room), probe) >= self.replicas

    def signal(self, room, event, user):
        """Publish a live-only event to the room's readers on every worker; nothing is stored.

        Its JSON starts with ``{"type":`` (a publication's with ``{"id":``); presence.lua
        publishes the same shape.
        """
        payload = json.dumps({"type": event, "room": room, "user": user}, separators=(",", ":"))
        if is_cluster(self.redis):
            self.redis.spublish(keys.room_channel(room), payload)
        else:
            self.redis.publish(keys.room_channel(room), payload)

    def publish_control(self, message):
        """Publish a :mod:`chatapp.core.control` message to every worker's hub."""
        self.redis.publish(keys.CONTROL_CHANNEL, message.encode())

    def read_after(self, room, cursor, count, acknowledged=True):
        """Up to ``count`` publications strictly after ``cursor``, oldest first (with replica
        acknowledgement only acknowledged ones, unless ``acknowledged`` is False)."""
        return [Publication.from_entry(entry) for entry in self._after(room, cursor, count, acknowledged)(self.redis)]

    def read_before(self, room, cursor, count):
        """Up to ``count`` publications strictly before ``cursor`` (or the newest), oldest first."""
        return [Publication.from_entry(entry) for entry in reversed(self._before(room, cursor, count)(self.redis))]

    def history(self, room, count, *, before=None, after=None):
        """A page of history, oldest first: each message in its latest state (an edited one with
        its latest ``text`` and ``edited``, the millisecond of its last edit). A deleted message
        is gone from the log; its deletion entry is what remains (a tombstone without text)."""
        read = self._after(room, after, count, True) if after is not None else self._before(room, before, count)
        pipe = self.redis.pipeline(transaction=False)
        read(pipe)
        pipe.hlen(keys.room_edits(room))
        entries, edited = pipe.execute()
        page = [Publication.from_entry(entry) for entry in _oldest_first(entries, after)]
        if not edited or not page:
            return page
        latest = self.redis.hmget(keys.room_edits(room), [str(p.id) for p in page])
        return [p if state is None else _edited(p, state) for p, state in zip(page, latest)]

    def _after(self, room, cursor, count, acknowledged):
        end = self._newest_readable(room) if acknowledged else "+"
        return lambda client: client.xrange(keys.room_log(room), f"({cursor}", end, count=count)

    def _before(self, room, cursor, count):
        if cursor is not None and cursor == ZERO:  # nothing is before the first id ("(0-0" is no range)
            return lambda client: client.xrevrange(keys.room_log(room), "0-0", "0-0", count=count)
        newest = self._newest_readable(room)
        end = newest if cursor is None or (newest != "+" and StreamId.parse(newest) < cursor) else f"({cursor}"
        return lambda client: client.xrevrange(keys.room_log(room), end, "-", count=count)

    def tail(self, room):
        """The id of the newest message readers may see, or ZERO for an empty room."""
        return self.tails([room])[0]

    def tails(self, rooms):
        """The newest id readers may see of each room, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.xrevrange(keys.room_log(room), "+", "-", count=1)
            if self.waits_for_replicas:
                pipe.get(keys.room_acked(room))
        replies = iter(pipe.execute())
        tails = []
        for _ in rooms:
            newest = next(replies)
            tail = StreamId.from_bytes(newest[0][0]) if newest else ZERO
            if self.waits_for_replicas:
                tail = _clamp(tail, next(replies))
            tails.append(tail)
        return tails

    def _newest_readable(self, room):
        """The end of a read of the room's log: "+", or with replica acknowledgement the
        newest acknowledged id (none recorded: the log predates the mode, all of it)."""
        if not self.waits_for_replicas:
            return "+"
        acked = self.redis.get(keys.room_acked(room))
        return acked.decode() if acked else "+"

    def count_after(self, cursors, cap, *, user="", dms=frozenset()):
        """For each ``{room: cursor}``, ``(messages, mentions of user)`` after the cursor (each at
        most ``cap``), in one round trip; the entries are counted inside Redis, never sent. In
        the rooms of ``dms`` every message from someone else is a mention."""
        replies = run_many(self._count_unread, [([keys.room_log(room)], [str(cursor), cap, user.lower(),
                                                                          "1" if room in dms else "0"])
                                                 for room, cursor in cursors.items()])
        return [tuple(reply) for reply in replies]

    def catch_up(self, room, cursor, count, upto=None):
        """Up to ``count`` publications after ``cursor``, and a :class:`Reset` if it is stale.

        A cursor is stale when messages after it may have been trimmed away, or
        when it is newer than anything this stream ever held (the store was
        wiped). Then the page is empty and the reader must be told (invariant 8),
        never silently moved on. One transaction, so a trim can't land between
        the reads. With replica acknowledgement nothing past ``upto`` (what the
        hub has released) or else the room's acknowledged marker is returned
        (invariant 11).
        """
        log, trimmed = keys.room_log(room), keys.room_trimmed(room)

        def read(client):
            pipe = client.pipeline(transaction=True)
            pipe.xrange(log, f"({cursor}", "+", count=count)
            pipe.xrange(log, "-", "+", count=1)
            pipe.xrevrange(log, "+", "-", count=1)
            pipe.exists(trimmed)
            if self.waits_for_replicas and upto is None:
                pipe.get(keys.room_acked(room))
            return pipe.execute()

        entries, first, last, was_trimmed, *acked = self._on_node(log, read)
        oldest = StreamId.from_bytes(first[0][0]) if first else None
        newest = StreamId.from_bytes(last[0][0]) if last else ZERO
        if cursor > newest or (was_trimmed and (oldest is None or cursor < oldest)):
            bound = newest if not self.waits_for_replicas else (upto or _clamp(newest, acked[0]))
            return [], Reset(min(newest, bound), oldest)
        page = [Publication.from_entry(entry) for entry in entries]
        if self.waits_for_replicas:
            bound = upto or _clamp(newest, acked[0])
            page = [p for p in page if p.id <= bound]
        return page, None

    def bound_to(self, redis):
        """The same broker on another connection pool (the hub reads on its own)."""
        return Broker(redis, self.maxlen, self.idempotency_ttl, durability=self.durability, replicas=self.replicas,
                      wait_ms=self.wait_ms)


def _appended(room, outcome, payload):
    """The script's ``{outcome, payload}`` as ``(Publication or None, created)``; a refusal raised."""
    if outcome == -1:
        raise _REFUSALS[payload.decode()](room)
    if not payload:
        return None, False
    return Publication.from_payload(payload), bool(outcome)


def _oldest_first(entries, after):
    return entries if after is not None else list(reversed(entries))


def _edited(publication, state):
    """``publication`` (a message) as its latest edit left it."""
    fields = json.loads(publication.json)
    latest = json.loads(state)
    fields.update(text=latest["text"], edited=latest["edited"])
    return Publication(publication.id, json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode())


def _clamp(newest, acked):
    """``newest``, but not past the acknowledged marker ``acked`` (raw, or None: no marker,
    the log predates replica acknowledgement)."""
    return newest if acked is None else min(newest, StreamId.from_bytes(acked))
