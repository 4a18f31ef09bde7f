"""The package version, in one place (the package, telemetry and published status read it)."""

__version__ = "0.1.0"
