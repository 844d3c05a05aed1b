"""What runs in a worker process: the model's code and everything that serves it.

`python -m modelhost.worker SPEC.json` (server.py) answers frames on its socket; the fetch
step (`python -m modelhost.worker.fetch SPEC.json`) puts the files in place before it. This
package imports nothing of the gateway's (`modelhost.supervision`, `modelhost.gateway`); the
two sides share only `modelhost.wire`.
"""
