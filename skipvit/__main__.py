"""``python -m skipvit``: the same command line as the ``skipvit`` console script."""

from skipvit.cli import main

if __name__ == "__main__":
    main()
