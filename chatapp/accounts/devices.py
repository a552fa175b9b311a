"""Device cookies: a browser that has signed in as a user before proves it, so strangers'
guesses at the name can't lock that browser out (OWASP, "Slow Down Online Guessing Attacks with
Device Cookies").

A device cookie is the username and a random nonce, signed with the app's secret key. A login
that carries a valid one for the name it signs in as is limited per device (its nonce), not per
name; every other login attempt (a stranger's, or the owner's on a browser that never signed in)
counts against the name as before. A device that guesses wrong too often is limited on its own.
"""

import secrets

from itsdangerous import BadSignature, URLSafeSerializer

DEVICE_COOKIE = "chat_device"
_SALT = "chat-device"


class DeviceCookies:
    def __init__(self, secret_key):
        self._signer = URLSafeSerializer(secret_key, salt=_SALT)

    def issue(self, user):
        """A new device cookie's value for ``user``."""
        return self._signer.dumps({"u": user.lower(), "n": secrets.token_urlsafe(12)})

    def nonce_for(self, value, user):
        """The device's nonce if ``value`` is a valid device cookie of ``user``, else None."""
        if not value:
            return None
        try:
            fields = self._signer.loads(value)
        except BadSignature:
            return None
        if not isinstance(fields, dict) or fields.get("u") != user.lower() or not isinstance(fields.get("n"), str):
            return None
        return fields["n"]
