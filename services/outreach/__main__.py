"""`python -m services.outreach` runs the outreach service."""

from services.outreach.app import create_app
from shared.serve import serve

if __name__ == "__main__":
    serve("outreach", create_app)
