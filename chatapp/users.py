"""User accounts stored in Redis, with salted, memory-hard password hashes."""

import hashlib
import json
import re
import time

from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

from .errors import BadRequest, Conflict

USERNAME_RE = re.compile(r"\A[A-Za-z0-9._-]{2,32}\Z")
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 1024  # hashing a megabyte password is a cheap way to burn our CPU
_AUTH_CACHE_MAX = 10_000


def validate_username(name):
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise BadRequest("Usernames are 2 to 32 letters, digits, '.', '_' or '-'.",
                         code="bad_username")
    return name


def validate_password(password):
    if not isinstance(password, str) or not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        raise BadRequest(f"Passwords are {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters.",
                         code="bad_password")
    return password


class UserStore:
    """Accounts under ``chat:user:<lowercased name>``; names are unique case-insensitively."""

    def __init__(self, redis, cache_secs):
        self.redis = redis
        self.cache_secs = cache_secs
        # Hashed once so an unknown user costs the same hash as a wrong password.
        self._dummy_hash = generate_password_hash("not a real password")
        self._cache = {}

    @staticmethod
    def _key(name):
        return f"chat:user:{name.lower()}"

    def create(self, name, password):
        validate_username(name)
        validate_password(password)
        record = {"name": name, "password": generate_password_hash(password),
                  "created": int(time.time())}
        if not self.redis.set(self._key(name), json.dumps(record), nx=True):
            raise Conflict("That username is taken.", code="username_taken")
        return name

    def authenticate(self, name, password):
        """Return the canonical username, or None; unknown and wrong cost the same."""
        if not isinstance(name, str) or not isinstance(password, str) \
                or not USERNAME_RE.match(name) or len(password) > PASSWORD_MAX_CHARS:
            check_password_hash(self._dummy_hash, "x")
            return None
        raw = self.redis.get(self._key(name))
        record = json.loads(raw) if raw else None
        stored = record["password"] if record else self._dummy_hash
        if check_password_hash(stored, password) and record:
            return record["name"]
        return None

    def authenticate_cached(self, name, password):
        """Like :meth:`authenticate`, remembering successes briefly.

        HTTP Basic sends the password with every request; without this, each
        curl call or API reader would pay a full scrypt hash (tens of ms of CPU).
        Only a digest of the credentials is kept, in this process's memory.
        """
        digest = hashlib.sha256(f"{name}\0{password}".encode()).digest()
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and hit[1] > now:
            return hit[0]
        user = self.authenticate(name, password)
        if user and self.cache_secs:
            if len(self._cache) >= _AUTH_CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (user, now + self.cache_secs)
        return user


def init_app(app):
    app.extensions["chat.users"] = UserStore(app.extensions["chat.redis"],
                                             app.config["CHAT_AUTH_CACHE_SECS"])


def current_users():
    return current_app.extensions["chat.users"]
