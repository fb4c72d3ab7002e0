"""The small HTTP kit both servers use: the node's (:mod:`coffer.server`) and the query server's
(:mod:`coffer.query.query_app`).

What is here is the same on both: the error shape and how answers are encoded
(:mod:`~coffer.http.responses`), request bodies and query parameters (:mod:`~coffer.http.inputs`,
with the signed 64-bit bound on integers), the JSON views of ledger records
(:mod:`~coffer.http.views`), API keys and roles (:mod:`~coffer.http.auth`), the wire format of the
event feed (:mod:`~coffer.http.feed_lines`) and the limits of the contract
(:mod:`~coffer.http.limits`). It imports only the core: never a server, never the read side.
"""
