"""Everything that talks to Redis: topology and clients, keys, Lua scripts, the Broker (append,
publish, read), rooms, memberships, presence, stream slots and rate-limit storage."""
