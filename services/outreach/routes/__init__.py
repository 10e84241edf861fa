"""The team API's routes: each turns a request into a call of the service layer and its
answer into a response. Roles, the unit of work and the records routes work on come from
`services.outreach.deps`."""
