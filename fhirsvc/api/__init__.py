"""The web layer: app factory, routes, authentication, middleware and logging."""
