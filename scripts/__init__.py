"""Data preparation and fixture scripts (run from the bundle root: ``python scripts/<name>.py --help``)."""
