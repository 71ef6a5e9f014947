"""The maintainers' side of SynMirror: regenerate sources (`generate`), measure them (`stats`), and export them
as configs of a publishable folder (`export`). Run `python -m builder --help`."""
