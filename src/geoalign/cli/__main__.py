"""`python -m geoalign.cli`: the same CLI as the `geoalign` script."""

from geoalign.cli.app import main

main()
