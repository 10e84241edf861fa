"""`python -m services.scheduler` runs the scheduler service."""

from services.scheduler.app import create_app
from shared.serve import serve

if __name__ == "__main__":
    serve("scheduler", create_app)
