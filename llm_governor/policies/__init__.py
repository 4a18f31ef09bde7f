"""Pure limiter algorithms over small state records and an injected ``now``.

Nothing here does I/O or reads a clock: backends run this very code inside
their lock or transaction (the Redis Lua scripts are a port of it, checked by a
differential test), and unit tests drive it with exact times.
"""
