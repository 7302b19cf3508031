"""``python -m handler run FILE.py:Class`` is the ``procflow`` command (see ``handler/cli/``)."""

from handler.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
