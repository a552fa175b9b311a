"""Users, passwords and sessions (kept in Redis through chatapp.store)."""
