"""What a request can reach: the app's services, built once by :mod:`chatapp.services`."""

from dataclasses import dataclass

from flask import current_app

from chatapp.accounts.access import Access
from chatapp.accounts.conversations import Conversations
from chatapp.accounts.users import UserStore
from chatapp.delivery.hub import Hub
from chatapp.ops.metrics import Metrics
from chatapp.store.broker import Broker
from chatapp.store.memberships import Memberships
from chatapp.store.migrations import Migration
from chatapp.store.presence import Presence
from chatapp.store.ratelimit import RateLimits
from chatapp.store.reads import ReadPositions
from chatapp.store.rooms import RoomRegistry
from chatapp.store.topology import Topology

EXTENSION = "chat"  # the one key in app.extensions: the Services of the app


@dataclass(frozen=True)
class Services:
    """The app's long-lived objects. Views take them from here (``services().broker``), never
    from strings in ``app.extensions``; :func:`chatapp.services.build` is the one place that
    builds them, in dependency order."""

    topology: Topology  # which Redis: one server, a Sentinel set or a Cluster
    redis: object  # the requests' client (chatapp.store.topology.client)
    broker: Broker
    rooms: RoomRegistry
    access: Access  # who may read, post to or manage a room: the one place that decides
    conversations: Conversations  # private rooms' members and roles, DMs, blocks
    reads: ReadPositions  # read positions and muted rooms, per user
    memberships: Memberships
    presence: Presence
    limits: RateLimits
    metrics: Metrics
    migration: Migration
    hub: Hub  # this worker's live delivery (started lazily, after the fork)
    users: UserStore


def services_of(app):
    """The :class:`Services` of ``app``."""
    return app.extensions[EXTENSION]


def services():
    """The :class:`Services` of the app handling this request."""
    return current_app.extensions[EXTENSION]
