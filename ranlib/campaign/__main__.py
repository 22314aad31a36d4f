"""`python -m ranlib.campaign ...`: see ranlib.campaign.runner."""

from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
