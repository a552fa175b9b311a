"""The one place where configuration is read.

Every setting comes from an environment variable with a default, is converted
and range-checked at start-up, and ends up as a key of ``app.config``. A bad
value stops the app with a message that names the variable, instead of failing
later in a request.
"""

import os
import secrets
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting has a value the app can't run with."""


def rate(text):
    """A rate-limit string such as ``20 per 10 seconds``; checked here, used by Flask-Limiter."""
    from limits import parse_many

    parse_many(text)
    return text


def networks(text):
    """Comma-separated IP networks (CIDR); empty means "anyone"."""
    import ipaddress

    return tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())


def memory_size(text):
    """A Redis memory size: bytes, or with kb, mb or gb (``0``: no limit)."""
    import re

    text = str(text).strip().lower()
    if not re.fullmatch(r"\d+(b|kb|mb|gb)?", text):
        raise ValueError(f"{text!r} is not a size like 512mb or 2gb")
    return text


def password_hash_method(text):
    """A werkzeug password hash method: ``scrypt[:N:r:p]`` (N a power of 2) or ``pbkdf2[:hash[:iterations]]``."""
    import hashlib

    method, *args = text.strip().split(":")
    if method == "scrypt":
        valid = not args or (len(args) == 3 and all(arg.isdigit() and int(arg) > 0 for arg in args)
                             and int(args[0]) > 1 and int(args[0]) & (int(args[0]) - 1) == 0)
    elif method == "pbkdf2":
        valid = len(args) <= 2 and (not args or args[0] in hashlib.algorithms_available) \
            and (len(args) < 2 or (args[1].isdigit() and int(args[1]) > 0))
    else:
        valid = False
    if not valid:
        raise ValueError(f"{text!r} is not a method like scrypt:32768:8:1 or pbkdf2:sha256:600000")
    return text.strip()


def name_list(text):
    """A comma-separated list of usernames, lowercased."""
    return tuple(sorted({part.strip().lower() for part in text.split(",") if part.strip()}))


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: object
    help: str
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw):
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ConfigError(f"{self.name}={raw!r}: expected true or false")
            return text in {"1", "true", "yes", "on"}
        try:
            value = self.kind(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.name}={raw!r}: expected {self.kind.__name__} ({exc})") from None
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{self.name}={raw!r}: must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.name}={raw!r}: must be at most {self.maximum}")
        return value


SETTINGS = (
    Setting("REDIS_URL", str, "", "Redis to use: one server (redis://host:6379/0, rediss://..., "
            "unix:///path.sock), Sentinel (redis+sentinel://host:26379,host:26380/mymaster) or a Cluster "
            "(redis+cluster://host:7000,host:7001). Unset: `./scripts/serve` starts an embedded Redis under var/."),
    Setting("CHAT_REDIS_MAXMEMORY", memory_size, "1gb", "Memory cap of the embedded Redis (noeviction: "
            "past it writes are refused and a POST gets a 507 `storage_full`; nothing stored is dropped). "
            "See docs/deploy.md for sizing; `0` for no cap. A `REDIS_URL` server keeps its own settings."),
    Setting("SECRET_KEY", str, "", "Signs session cookies. Unset: a random key per process "
            "(`./scripts/serve` keeps one in var/secret_key so all workers share it)."),
    Setting("CHAT_MAX_MESSAGE_CHARS", int, 4000, "Longest message text; longer is a 413.", 1, 1_000_000),
    Setting("CHAT_MAX_BODY_BYTES", int, 64 * 1024, "Largest request body; larger is a 413.", 1024),
    Setting("CHAT_BODY_DEADLINE_SECS", float, 10.0, "A request's body must arrive within this, or a 408 closes "
            "the connection (gunicorn's keep-alive timeout covers only the head).", 0.1, 600),
    Setting("CHAT_BODIES_PER_ADDRESS", int, 32, "Bodies one client address may be sending to a worker at once; "
            "past it a 429 closes the connection at once (a slow-body flood holds no more).", 1, 100_000),
    Setting("CHAT_STREAM_MAXLEN", int, 10_000, "Messages kept per room (XADD MAXLEN ~).", 10),
    Setting("CHAT_IDEMPOTENCY_TTL_SECS", int, 24 * 3600, "How long a retry with the same "
            "Idempotency-Key / client_id returns the first message.", 1),
    Setting("CHAT_HEARTBEAT_SECS", float, 15.0, "SSE `: ping` interval; proxies drop idle links "
            "and a dead client is only noticed on a write.", 0.05, 300),
    Setting("CHAT_RETRY_MS", int, 2000, "SSE `retry:` sent to clients (reconnect delay).", 0, 600_000),
    Setting("CHAT_POLL_TIMEOUT_SECS", float, 25.0, "Default long-poll wait.", 0, 600),
    Setting("CHAT_POLL_MAX_TIMEOUT_SECS", float, 60.0, "Cap on the long-poll `timeout`.", 0, 600),
    Setting("CHAT_POLL_PACE_MS", int, 200, "A long-poller is answered at most once per this: an answer "
            "due sooner waits and carries every message of the window (a busy room costs each poller at "
            "most 1000/this requests a second).", 0, 10_000),
    Setting("CHAT_POLL_LINGER_SECS", float, 3.0, "A long-poller's reader is kept this long after an "
            "answer for the client's next poll, which then skips the request's checks (they were made "
            "once and the worker keeps them up, as for a stream); it holds a stream slot meanwhile.", 0, 600),
    Setting("CHAT_HISTORY_MAX_LIMIT", int, 200, "Cap on history `limit`.", 1, 10_000),
    Setting("CHAT_BACKLOG_MAX", int, 200, "Cap on SSE `backlog`.", 0, 10_000),
    Setting("CHAT_MAX_STREAMS", int, 10_000, "Streams and long-polls one worker holds at most; "
            "past it a stream is told to retry (`event: retry`, reason `busy`), a long-poll gets a 503.", 1),
    Setting("CHAT_MAX_STREAMS_PER_USER", int, 20, "Streams and waiting long-polls one account holds "
            "at most, over all workers and hosts; past it a stream gets `event: retry` with reason "
            "`too_many_streams` (a long-poll a 429).", 1),
    Setting("CHAT_STREAM_LEASE_SECS", float, 45.0, "A worker renews its streams' places in their users' "
            "counts every third of this; those of a worker that died stop counting within it.", 0.3, 3600),
    Setting("CHAT_READER_QUEUE", int, 128, "Frames queued per reader before it is switched "
            "to catching up (bounds a slow reader's memory).", 1),
    Setting("CHAT_HUB_RING", int, 512, "Recent messages each worker keeps per active room, so "
            "readers that fell behind catch up without reading Redis.", 0),
    Setting("CHAT_CATCHUP_PAGE", int, 500, "Messages read per XRANGE when a reader catches up.", 1, 10_000),
    Setting("CHAT_SUBSCRIBE_TIMEOUT_SECS", float, 5.0, "How long a new reader waits for the "
            "worker's Pub/Sub subscription before it is told to retry.", 0.1, 60),
    Setting("CHAT_HUB_PING_SECS", float, 5.0, "Pub/Sub liveness ping; a link silent for three "
            "pings is dropped and reconnected.", 0.05, 60),
    Setting("CHAT_ROOM_LINGER_SECS", float, 5.0, "Keep a room subscribed this long after its last "
            "local reader leaves, so reconnects don't churn subscriptions.", 0, 3600),
    Setting("CHAT_MAX_ROOMS", int, 1000, "Rooms the server holds at most (each is a stream in "
            "Redis and a line in every room list); past it creating one is a 403 `rooms_full`.", 1),
    Setting("CHAT_MAX_ROOMS_PER_USER", int, 20, "Rooms one account may create; past it a 403 "
            "`room_quota`.", 0),
    Setting("CHAT_EDIT_WINDOW_SECS", float, 24 * 3600, "How long after sending its author may edit a "
            "message (deleting has no limit); past it a 403 `edit_window_passed`.", 0),
    Setting("CHAT_MAX_EDITS", int, 100, "Edits one message may have; past it a 403 `edit_limit` (each edit "
            "is an entry in the room's log).", 1, 10_000),
    Setting("CHAT_MAX_PRIVATE_ROOMS_PER_USER", int, 20, "Private rooms one account may create; past it a "
            "403 `private_room_quota`.", 0),
    Setting("CHAT_MAX_ROOM_MEMBERS", int, 1000, "Members a private room may have; past it an invite is a "
            "403 `room_members_full`.", 2, 100_000),
    Setting("CHAT_MAX_JOINED_ROOMS", int, 100, "Rooms one account may be a member of (each is followed "
            "by every stream of that user); past it a 403 `membership_quota`.", 1, 10_000),
    Setting("CHAT_DURABILITY", str, "primary", "What a 201 means: `primary` (written on the Redis primary; its "
            "AOF is fsynced every second), `fsync` (fsynced there first: the embedded Redis runs appendfsync "
            "always), or `replicas` (also on CHAT_DURABILITY_REPLICAS replicas: WAIT after the append; readers "
            "only see a message once it is). See docs/deploy.md."),
    Setting("CHAT_DURABILITY_REPLICAS", int, 1, "With CHAT_DURABILITY=replicas: replicas that must have a "
            "message before its 201.", 1, 16),
    Setting("CHAT_DURABILITY_TIMEOUT_MS", int, 1000, "With CHAT_DURABILITY=replicas: how long a POST waits for "
            "them; past it a retryable 503 `not_replicated`.", 10, 60_000),
    Setting("CHAT_REDIS_POOL", int, 64, "Redis connections per worker for commands.", 1, 10_000),
    Setting("CHAT_REDIS_TIMEOUT_SECS", float, 5.0, "Socket timeout for Redis commands.", 0.1, 120),
    Setting("CHAT_REDIS_COALESCE", bool, True, "Requests' Redis commands of one pass of a worker's event loop "
            "share a round trip (a fifth less CPU per POST; on a worker saturated by long-polls, POSTs wait a "
            "pass longer: docs/benchmarks.md)."),
    Setting("CHAT_SESSION_LIFETIME_SECS", int, 14 * 24 * 3600, "Session cookie lifetime.", 60),
    Setting("CHAT_MAX_SESSIONS_PER_USER", int, 50, "Sessions (signed-in browsers) one account keeps; "
            "a login past it ends the oldest.", 1, 100_000),
    Setting("CHAT_SESSION_RECHECK_SECS", float, 30.0, "Every open stream re-checks its session (or, "
            "for HTTP Basic, the account and its ban) this often, so it ends within this even if "
            "the message that should have ended it was missed.", 0.1, 3600),
    Setting("CHAT_HASH_THREADS", int, 1, "Threads per worker that hash passwords (scrypt, ~100 ms of "
            "CPU each), so sign-ins never stall a worker's streams.", 1, 64),
    Setting("CHAT_PASSWORD_HASH", password_hash_method, "scrypt:32768:8:1", "How new password hashes are made "
            "(werkzeug's method: `scrypt:N:r:p` or `pbkdf2:<hash>:<iterations>`). A stored hash keeps its own "
            "method, so a change never locks anyone out. Cheap methods are for tests only (the suite's in-process "
            "apps use `pbkdf2:sha256:1`): the cost is what slows down cracking a stolen account database."),
    Setting("CHAT_HASH_QUEUE", int, 16, "Sign-ins that may wait for a hashing thread; past it a "
            "503 `busy` with Retry-After.", 0, 10_000),
    Setting("CHAT_AUTH_CACHE_SECS", float, 300.0, "How long a verified HTTP Basic credential skips "
            "the password hash (the account and ban are still checked every request).", 0, 86400),
    Setting("CHAT_PRESENCE_TTL_SECS", float, 45.0, "A user held only by a dead worker leaves the "
            "presence list within this (plus a 2 s sweep).", 3, 3600),
    Setting("CHAT_PRESENCE_LINGER_SECS", float, 5.0, "A closed stream keeps its user present this long, "
            "so a reconnect or a quick room switch doesn't announce leave and join.", 0, 600),
    Setting("CHAT_TRUSTED_PROXIES", int, 0, "Proxies in front of the app (nginx: 1) whose "
            "X-Forwarded-For/-Proto are trusted for the client address; 0 trusts none.", 0, 10),
    Setting("CHAT_METRICS_ALLOW", networks, "127.0.0.1/32,::1/128", "Networks that may read /metrics "
            "(comma-separated CIDRs; empty: anyone)."),
    Setting("CHAT_LOG_FORMAT", str, "text", "Log lines as `text` or `json`."),
    Setting("CHAT_ACCESS_LOG", bool, True, "Log one line per request (turn off for benchmarks)."),
    Setting("CHAT_ADMINS", name_list, "", "Comma-separated usernames allowed to kick and ban."),
    Setting("CHAT_HTTPS", bool, False, "Served over HTTPS: session cookies get the Secure flag."),
    Setting("CHAT_RATE_MESSAGES", rate, "20 per 10 seconds", "Messages each user may send."),
    Setting("CHAT_RATE_LOGIN_IP", rate, "10 per minute", "Login attempts per client IP "
            "(and failed HTTP Basic attempts)."),
    Setting("CHAT_RATE_LOGIN_USER", rate, "10 per minute", "Login attempts per username "
            "(also password changes and failed HTTP Basic attempts)."),
    Setting("CHAT_RATE_LOGIN_DEVICE", rate, "10 per minute", "Login attempts per device cookie: a browser that "
            "signed in as the name before is limited on its own instead of per username, so strangers' "
            "guesses can't lock it out."),
    Setting("CHAT_RATE_REGISTER_IP", rate, "10 per hour", "Registrations per client IP."),
    Setting("CHAT_RATE_TYPING", rate, "30 per minute", "Typing notices each user may send."),
    Setting("CHAT_RATE_ROOMS", rate, "10 per hour", "Rooms each user may create."),
    Setting("CHAT_RATE_UNREAD", rate, "60 per minute", "Unread-count requests each user may make "
            "(the page makes one when it loads; the stream keeps them current)."),
    Setting("CHAT_RATE_MEMBERSHIP", rate, "60 per minute", "Joins and leaves each user may make."),
    Setting("CHAT_RATE_EDITS", rate, "30 per minute", "Edits and deletions each user may make (each is an "
            "entry in the room's log)."),
    Setting("CHAT_RATE_READS", rate, "5 per second", "Read positions each user may send (the page sends at "
            "most 2 a second, however fast you scroll)."),
    Setting("CHAT_RATE_INVITES", rate, "100 per hour", "Members each user may add to private rooms."),
    Setting("CHAT_RATE_DMS", rate, "60 per hour", "Direct conversations each user may start."),
    Setting("CHAT_RATE_ROOM_CHANGES", rate, "60 per hour", "Removals, role changes, renames and archivings "
            "each user may make (each is an entry in the room's log)."),
    Setting("CHAT_RATE_STREAMS", rate, "60 per minute", "New SSE streams and long-polls each user "
            "may open (a long-poll that continues on its worker's kept poller isn't new: see "
            "`CHAT_POLL_LINGER_SECS`)."),
)


def setting(name, environ=None):
    """One setting's value from ``environ`` (the gunicorn master reads a few before the app exists)."""
    environ = os.environ if environ is None else environ
    found = next(s for s in SETTINGS if s.name == name)
    return found.parse(environ.get(name, found.default))


def load_settings(environ=None, overrides=None):
    """Return ``{name: value}`` for every setting, from ``environ`` then ``overrides``."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values = {}
    for setting in SETTINGS:
        raw = overrides.get(setting.name, environ.get(setting.name, setting.default))
        values[setting.name] = setting.parse(raw)
    if not values["REDIS_URL"]:
        raise ConfigError("REDIS_URL is not set: start the app with ./scripts/serve (which runs an "
                          "embedded Redis) or point REDIS_URL at a Redis server")
    if not values["SECRET_KEY"]:
        values["SECRET_KEY"] = secrets.token_hex(32)
    if values["CHAT_DURABILITY"] not in ("primary", "fsync", "replicas"):
        raise ConfigError("CHAT_DURABILITY must be primary, fsync or replicas")
    if values["CHAT_LOG_FORMAT"] not in ("text", "json"):
        raise ConfigError("CHAT_LOG_FORMAT must be text or json")
    if values["CHAT_POLL_TIMEOUT_SECS"] > values["CHAT_POLL_MAX_TIMEOUT_SECS"]:
        raise ConfigError("CHAT_POLL_TIMEOUT_SECS must not exceed CHAT_POLL_MAX_TIMEOUT_SECS")
    extra = {k: v for k, v in overrides.items() if k not in values}
    return {**values, **extra}


def markdown_table():
    """The settings as the Markdown table in README.md (``python -m chatapp.ops.config``)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = s.default if s.default != "" else "(unset)"
        rows.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows)


def update_readme(path):
    """Rewrite the table between the README's settings markers."""
    text = open(path).read()
    start = text.index("\n", text.index("<!-- settings:")) + 1
    end = text.index("<!-- /settings -->")
    with open(path, "w") as readme:
        readme.write(text[:start] + markdown_table() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--update-readme"]:
        update_readme("README.md")
    else:
        print(markdown_table())
