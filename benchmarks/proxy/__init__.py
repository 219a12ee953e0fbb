"""Side-by-side proxy harness: fastpipe against nginx, aiohttp, Starlette+httpx, a bare relay and no proxy.

``python -m benchmarks.proxy --help`` tells how to run it. Every process it starts runs on 127.0.0.1 in its own
process group and is stopped on exit, on errors and on Ctrl-C.
"""
