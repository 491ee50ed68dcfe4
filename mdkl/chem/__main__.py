"""``python -m mdkl.chem prior [--profile P] [--seed S]``: see :func:`mdkl.chem.reinvent.main`."""

from mdkl.chem.reinvent import main

if __name__ == "__main__":
    main()
