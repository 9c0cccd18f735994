"""`python -m cnnctl` is the same as the `cnnctl` console script."""

from cnnctl.cli import main

main()
