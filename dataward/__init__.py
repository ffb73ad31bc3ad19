"""dataward wiring: configuration, the CLI and the embedded mode. No business logic here."""
__version__ = "0.1.0"
