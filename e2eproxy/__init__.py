"""e2eproxy: a transparent end-to-end-encrypting reverse proxy for Matrix."""

__version__ = "0.1.0"
