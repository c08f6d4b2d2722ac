"""HTTP and WebSocket layer: Quart app, routes, envelope, serving. Thin over the core."""
