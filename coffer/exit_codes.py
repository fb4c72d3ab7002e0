"""The exit codes of every ``coffer`` command, one table (listed in ``coffer --help``).

Commands that talk to a node map each answer to one code by its HTTP status, so an error code
(``ACCOUNT_NOT_FOUND``, say) gives the same exit code whatever the command. ``serve`` and
``query serve`` exit with ``configuration`` or ``in_use`` when they cannot start, after one line
on stderr.
"""

done = 0
rejected = 1  # HTTP 409: a ledger rule said no; nothing changed
invalid = 2  # a usage error (click's own code), a malformed request (HTTP 422), or bad configuration
not_found = 3  # HTTP 404
unavailable = 4  # HTTP 503 or no answer; a retry with the same dedup_id is safe
auth = 5  # HTTP 401 / 403
other = 6  # any other answer of the server
in_use = 7  # cannot start: the data directory or the port is taken by another process
recovery_failed = 8  # a server stopped: its data directory cannot be recovered (damaged, or mixes histories)
