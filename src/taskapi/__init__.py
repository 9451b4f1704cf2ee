"""taskapi: an asynchronous, multi-user task-management REST API."""

__version__ = "0.1.0"
