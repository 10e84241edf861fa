"""The dashboard (`GET /dashboard`): the program's figures as a page a team lead reads each
morning, charts rendered on the server from Vega-Lite specifications."""
