"""The package's version: its major version is the API's (docs/openapi.yaml's
``info.version``), which it speaks."""
__version__ = "1.0.0"
