"""Fetch a version's files before its worker starts: `python -m modelhost.worker.fetch SPEC`.

The supervisor runs this short process with its own environment (the object store's URL and,
for S3, the AWS_* credentials) and only then starts the worker, whose model code never sees
those credentials (supervision/worker_env.py) nor runs in a process that holds them.

Exit code 0: the model folder and the `download_files_from` files are in place. Otherwise the
last line on stdout is the reason the version failed (e.g. the files are not in the store).
"""

from __future__ import annotations

import logging
import sys

from modelhost.errors import ModelhostError
from modelhost.worker.prepare import sync_files
from modelhost.worker.server import start_child

log = logging.getLogger("modelhost.fetch")


def main(argv: list[str] | None = None) -> int:
    spec = start_child(argv)
    try:
        sync_files(spec)
    except ModelhostError as exc:
        log.error("%s v%s: fetching files failed: %s", spec.name, spec.version, exc.message)
        print(exc.message, flush=True)
        return 2
    except Exception as exc:
        log.exception("%s v%s: fetching files failed", spec.name, spec.version)
        print(f"fetching model files failed: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
