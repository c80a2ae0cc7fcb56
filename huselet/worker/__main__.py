"""Entry point of a worker process: ``python -m huselet.worker``."""

from huselet.worker.sdk import main

raise SystemExit(main())
