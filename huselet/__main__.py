"""``python -m huselet`` is the same as the ``huselet`` command."""

from huselet.cli import main

raise SystemExit(main())
