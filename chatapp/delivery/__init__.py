"""Live delivery in one worker: the hub and its Pub/Sub links, readers, multiplexed streams,
long-pollers, SSE streams and their sockets, and the housekeeping that keeps them honest."""
