"""Outreach's service layer: the team's flows, called by the routes (and the projection, for
what the scheduler's events change). Each flow takes the request's unit of work and commits
it once: the domain change, its outbox rows and its audit entries together, or nothing.

- `tasks`: the queue, claims, assignments and handovers, attempts, notices;
- `cases`: contacts, services, referrals, declines, do-not-contact, the conclusion;
- `visits`: in-person visits and the deputy's part;
- `texts`: the text-message saga and STOP;
- `community`: referrals from the community;
- `team`: the roster and the audit log;
- `hot_spots`: hot-spot tasks (no person) and a lead's conclusion of them.
"""
