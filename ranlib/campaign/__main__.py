"""`python -m ranlib.campaign ...`: see ranlib.campaign.cli."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
