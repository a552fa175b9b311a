"""A multi-room chat over HTTP: POST to send, Server-Sent Events or long-poll to read."""


def create_app(test_config=None):
    """Build the Flask app; see :func:`chatapp.app.create_app`."""
    # Imported here, not at the top: the gunicorn master imports chatapp.ops.config
    # and chatapp.store.embedded_redis, and must not import Flask or redis-py (they
    # import ssl) before the gevent workers monkey-patch it.
    from chatapp.app import create_app as build

    return build(test_config)
