"""``python -m runtime run FILE.py:Class`` is the ``procflow`` command (see ``runtime/_cli.py``)."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
