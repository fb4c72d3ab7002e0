"""The access layer: business flows as data, translated into the core's commands.

A flow is a named, versioned definition (``definition.py``) with typed parameters, computed values
in a small exact expression language (``expressions.py``), checks, and the commands it produces,
run atomically or as a saga (``runner.py``). Definitions are registered in the replicated state as
opaque bytes, so every replica agrees on them; the core never reads them.
"""
