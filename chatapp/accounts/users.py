"""User accounts in Redis: scrypt password hashes, case-insensitive names, bans."""

import hashlib
import hmac
import json
import re
import time
from typing import NamedTuple

import redis
from werkzeug.security import generate_password_hash

from chatapp.ops.errors import BadRequest, Conflict, Forbidden
from chatapp.store import keys
from chatapp.store.errors import is_out_of_memory

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


class Account(NamedTuple):
    """A verified account: its canonical name, and its record as read (a login is only
    accepted if the record is unchanged when the session is stored)."""

    name: str
    record: bytes


def credential(record):
    """A fingerprint of an account record as a password was checked against it: the record
    changes (only) when the password does, and this reveals nothing of either. A Basic
    stream keeps it (chatapp.delivery.session_watch.recheck); the shared verified marker holds it."""
    return hashlib.sha256(record).hexdigest()[:32]


class UserStore:
    """Accounts (JSON) and bans under the user's keys (:func:`chatapp.store.keys.user`,
    :func:`chatapp.store.keys.banned`)."""

    def __init__(self, redis, hasher, cache_secs, secret, *, admins=frozenset()):
        self.redis = redis
        self.admins = admins  # CHAT_ADMINS: lowercase names
        self.hasher = hasher  # every hash runs in its threads, never on the event loop
        self.cache_secs = cache_secs
        self._secret = hashlib.sha256(b"chat verified credentials\0" + secret.encode()).digest()
        # Hashed once so an unknown user costs the same hash as a wrong password.
        self._dummy_hash = generate_password_hash("not a real password", hasher.method)
        self._cache = {}
        # Credentials this worker may accept without reading Redis at all, while the hub's
        # control channel vouches that no "sessions ended" message was missed (see trust_while).
        self._trusted = {}  # token -> (control epoch, deadline, Account)
        self._control_epoch = None
        self._forgotten = 0  # how many times a user was forgotten: a check that straddles one isn't kept

    def create(self, name, password, *, reserved_ok=False):
        """Create an account. Names in ``CHAT_ADMINS`` are reserved for the operator (the
        ``flask users create`` command passes ``reserved_ok``): otherwise whoever registered
        an admin's name first would get an admin's rights."""
        validate_username(name)
        validate_password(password)
        if self.is_admin(name) and not reserved_ok:
            raise Conflict("That username is reserved.", code="username_reserved")
        if self.redis.exists(keys.user(name)):  # don't spend a hash on a name that is taken
            raise Conflict("That username is taken.", code="username_taken")
        record = json.dumps({"name": name, "password": self.hasher.hash(password),
                             "created": int(time.time())}).encode()
        if not self.redis.set(keys.user(name), record, nx=True):
            raise Conflict("That username is taken.", code="username_taken")
        return Account(name, record)

    def _load(self, name):
        """``(raw record or None, record or None, banned)`` in one round trip."""
        raw, banned = self.redis.mget(keys.user(name), keys.banned(name))
        return raw, (json.loads(raw) if raw else None), banned is not None

    def authenticate(self, name, password):
        """Return the :class:`Account`, or None; raise Forbidden for a banned account.

        An unknown user and a wrong password cost the same scrypt hash, so the
        answer and its timing don't reveal which names exist.
        """
        if not isinstance(name, str) or not isinstance(password, str) \
                or not USERNAME_RE.match(name) or len(password) > PASSWORD_MAX_CHARS:
            self.hasher.check(self._dummy_hash, "x")
            return None
        raw, record, banned = self._load(name)
        if not self._verify(record, password):
            return None
        if banned:
            raise Forbidden("This account is banned.", code="banned")
        return Account(record["name"], raw)

    def _verify(self, record, password):
        stored = record["password"] if record else self._dummy_hash
        return self.hasher.check(stored, password) and record is not None

    def authenticate_basic(self, name, password, guard):
        """:meth:`authenticate` for HTTP Basic, which sends the password with every request.

        A credential this worker accepted lately is accepted again without reading
        Redis while the hub's control channel vouches for it (:meth:`trust_while`):
        a password change, ban or logout-everywhere publishes a control message that
        makes every worker forget the user, and a break in the channel forgets
        everyone. Otherwise the account and its ban are read (one MGET), and the
        scrypt hash is skipped when this process, or another worker or host,
        verified the same password against the same stored hash within
        ``CHAT_AUTH_CACHE_SECS`` (a marker in Redis keyed by an HMAC of name and
        password, holding a fingerprint of the stored hash): a password change takes
        effect at once, without paying tens of ms of CPU per request.

        Every other attempt is a guess until proven right: ``guard.begin()``
        refuses it with a 429 before its hash once the login limits are used up
        (counting the guesses still being hashed), and ``guard.end()`` counts a
        wrong one. A credential verified lately skips both, on every worker, so a
        stranger guessing at a name can't lock its owner's working client out.
        """
        if not USERNAME_RE.match(name) or len(password) > PASSWORD_MAX_CHARS:
            guard.begin()
            guard.end(failed=True)
            return None
        token = hmac.new(self._secret, f"{name.lower()}\0{password}".encode(), hashlib.sha256).hexdigest()
        account, epoch = self._trusted_account(token)
        if account is not None:
            return account
        forgotten = self._forgotten
        raw, marker, banned = self.redis.mget(keys.user(name), keys.verified(name, token), keys.banned(name))
        record = json.loads(raw) if raw else None
        banned = banned is not None
        now = time.monotonic()
        cached = self._cache.get(token) if record else None
        if cached and cached[0] == record["password"] and cached[1] > now:
            stored_hash, _, marker_due = cached
            if marker_due <= now:  # keep the shared marker alive for the other workers
                self._mark_verified(name, token, raw)
                marker_due = now + self.cache_secs / 2
        else:
            if not (raw and marker == credential(raw).encode()):  # nobody verified it lately
                guard.begin()  # a 429 before any hash once the limits are used up
                outcome = None
                try:
                    outcome = self._verify(record, password)
                finally:
                    guard.end(failed=outcome is False)  # not when no answer came (busy, Redis down)
                if not outcome:
                    return None
                self._mark_verified(name, token, raw)
            stored_hash, marker_due = record["password"], now + self.cache_secs / 2
            if len(self._cache) >= _AUTH_CACHE_MAX:
                self._cache.clear()
        # Renewed on every use: a client in steady use never needs the hash (or the limits) again.
        self._cache[token] = (stored_hash, now + self.cache_secs, marker_due)
        if banned:
            raise Forbidden("This account is banned.", code="banned")
        account = Account(record["name"], raw)
        self._trust(token, epoch, forgotten, account)
        return account

    def trust_while(self, control_epoch):
        """Accept a credential checked lately without reading Redis while ``control_epoch()``
        returns the epoch it was checked in. Every change that must reach a Basic client at
        once (password change, ban, logout everywhere) publishes a control message naming the
        user, which calls :meth:`forget`; a break in the control channel changes the epoch."""
        self._control_epoch = control_epoch

    def forget(self, user):
        """Drop what this worker trusts of ``user`` (a control message ended its sessions)."""
        user = user.lower()
        self._forgotten += 1
        for token in [t for t, (_, _, account) in self._trusted.items() if account.name.lower() == user]:
            del self._trusted[token]

    def _trusted_account(self, token):
        """``(account or None, epoch or None)``: the account if trusted now, and the epoch a
        check made now would be trusted in."""
        epoch = self._control_epoch() if self._control_epoch is not None else None
        if epoch is None:
            return None, None
        trusted = self._trusted.get(token)
        if trusted is not None and trusted[0] == epoch and trusted[1] > time.monotonic():
            return trusted[2], epoch
        return None, epoch

    def _trust(self, token, epoch, forgotten, account):
        if epoch is None or forgotten != self._forgotten or self._control_epoch() != epoch:
            return  # a control message (or a break) came while this was being checked
        if len(self._trusted) >= _AUTH_CACHE_MAX:
            self._trusted.clear()
        # Until the shared marker is due again: the next check then goes by the MGET path,
        # which keeps this worker's cache and the marker alive, so a client in steady use
        # never meets the hash or the login limits again (see authenticate_basic).
        self._trusted[token] = (epoch, time.monotonic() + self.cache_secs / 2, account)

    def _mark_verified(self, name, token, raw):
        """Tell every worker this credential is good (for CHAT_AUTH_CACHE_SECS): a client that
        moves to another worker needn't be hashed, nor meet the guessing limits, again."""
        try:
            self.redis.set(keys.verified(name, token), credential(raw), ex=max(1, int(self.cache_secs)))
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise  # full: this worker's own cache still knows

    def change_password(self, name, current, new):
        """Set a new password; return the :class:`Account` as now stored."""
        validate_password(new)
        _, record, _ = self._load(name)
        if not self._verify(record, current if isinstance(current, str) else ""):
            raise Forbidden("The current password is wrong.", code="bad_credentials")
        record["password"] = self.hasher.hash(new)
        raw = json.dumps(record).encode()
        self.redis.set(keys.user(name), raw, xx=True)
        return Account(record["name"], raw)

    def exists(self, name):
        return bool(USERNAME_RE.match(name)) and bool(self.redis.exists(keys.user(name)))

    def existing(self, names):
        """The names of ``names`` that are accounts, in order (one round trip)."""
        names = [name for name in names if USERNAME_RE.match(name)]
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.user(name))
        return [name for name, found in zip(names, pipe.execute()) if found]

    def set_banned(self, name, banned):
        if banned:
            self.redis.set(keys.banned(name), "1")
        else:
            self.redis.delete(keys.banned(name))

    def is_admin(self, name):
        return name is not None and name.lower() in self.admins
