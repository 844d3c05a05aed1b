"""The gateway's side of the workers: starting, watching and stopping them (supervisor.py,
placement), their sockets (channel.py), memory bound (memory.py) and environment
(worker_env.py). Nothing here imports `modelhost.worker`; the two sides share only
`modelhost.wire`.
"""
