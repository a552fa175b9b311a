"""Values and pure logic of the chat: stream ids, publications, SSE framing, cursors, end reasons,
the control-message schema. No I/O: nothing here talks to Redis or knows Flask."""
