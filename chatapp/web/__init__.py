"""The HTTP surface: one blueprint per resource, request helpers, the WSGI middlewares
(socket takeover, the long-poll short path), and the mapping of errors to JSON."""
