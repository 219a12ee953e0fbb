"""Tests of the adapters: sources, ASGI/aiohttp/asyncio sinks, tee and the disconnect policy, the SSE tap."""
