"""`python -m modelhost.worker SPEC.json`: the worker process of one model-version replica."""

from modelhost.worker.server import main

main()
