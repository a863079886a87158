"""``python -m softmargin``: the ``softmargin`` command."""

from softmargin.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
