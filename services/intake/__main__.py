"""`python -m services.intake` runs the intake service."""

from services.intake.app import create_app
from shared.serve import serve

if __name__ == "__main__":
    serve("intake", create_app)
