"""The ``huselet`` subcommands, one module each.

Each module holds one subcommand's arguments (``add_parser``) and its action
(``cmd_…``, returning the exit code); :mod:`huselet.cli` builds the parser from
them and runs the chosen one. Heavy imports (trio, the daemon) stay inside the
actions so ``huselet --help`` and ``huselet ctl`` start quickly.
"""
