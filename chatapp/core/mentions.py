"""``@name`` in a message's text: who it may mention (the names; whether they exist is the
accounts' to say)."""

import re

# A username as accounts allow it (2 to 32 of letters, digits, '.', '_', '-'), after an '@' that
# doesn't follow a word character (so an e-mail address mentions nobody).
_MENTION_RE = re.compile(r"(?<![\w@.])@([A-Za-z0-9._-]{2,32})")
# A message naming more people than this mentions only the first ones: each mention costs a
# check and a count, and a message naming 10,000 people is a spam bomb, not a conversation.
MAX_MENTIONS = 20


def mentioned_names(text, limit=MAX_MENTIONS):
    """The distinct lowercase names ``@``-mentioned in ``text``, in order, at most ``limit``."""
    names = []
    for match in _MENTION_RE.finditer(text):
        name = match.group(1).rstrip(".").lower()
        if len(name) >= 2 and name not in names:
            names.append(name)
            if len(names) == limit:
                break
    return names
