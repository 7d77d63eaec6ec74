"""`python -m geoalign.cli`: the same CLI as the `geoalign` script, under the same name."""

from geoalign.cli.app import app

app(prog_name="geoalign")
