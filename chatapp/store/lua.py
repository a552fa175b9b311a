"""The Lua scripts (``lua/*.lua``): loaded once per client, run with EVALSHA, and run many at once."""

from importlib import resources

import redis.cluster


def lua_script(name):
    """The source of ``lua/<name>.lua`` (registered once per client, run with EVALSHA)."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def is_cluster(client):
    return isinstance(client, redis.cluster.RedisCluster)


def run_many(script, calls):
    """``script(keys, args)`` for each ``(keys, args)`` of ``calls``: in one pipeline, or on a
    Redis Cluster (where redis-py can't pipeline scripts) one call each."""
    client = script.registered_client
    if is_cluster(client):
        return [script(names, args) for names, args in calls]
    pipe = client.pipeline(transaction=False)
    for names, args in calls:
        script(names, args, client=pipe)
    return pipe.execute() if calls else []


def room_script(client, name):
    """A script that publishes to a room's channel, registered on ``client``: on a Redis Cluster
    it publishes with SPUBLISH (sharded Pub/Sub: only the room's node sends it, to the links
    subscribed there), elsewhere with PUBLISH."""
    source = lua_script(name)
    if is_cluster(client):
        source = source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
    return client.register_script(source)


