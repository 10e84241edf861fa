"""`python -m services.reporting` runs the reporting service."""

from services.reporting.app import create_app
from shared.serve import serve

if __name__ == "__main__":
    serve("reporting", create_app)
