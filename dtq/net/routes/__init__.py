"""Route groups. Each module's `register(api)` declares its operations."""
