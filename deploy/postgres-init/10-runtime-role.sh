#!/usr/bin/env bash
# Runs once, as the database superuser, when the postgres container first initialises its data
# volume (docker-entrypoint-initdb.d). Creates the runtime role the PORTline services connect
# as: it may log in and nothing else until `portline migrate` (run as the owner, `portline`)
# grants it row access to each service's schema. It owns nothing, so it can neither alter a
# table nor drop or disable the triggers that keep the audit logs append-only.
set -euo pipefail
: "${POSTGRES_APP_PASSWORD:?POSTGRES_APP_PASSWORD is required}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE portline_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portline_app')
\gexec
GRANT CONNECT ON DATABASE portline TO portline_app;
SQL
