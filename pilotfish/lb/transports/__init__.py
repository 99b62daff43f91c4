"""The transports engine: asyncio transports and protocols (any event loop)."""
