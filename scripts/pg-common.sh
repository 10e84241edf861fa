# Shared by scripts/pg-backup.sh and scripts/pg-restore.sh (sourced, not run).
url="${DATABASE_OWNER_URL:-${DATABASE_URL:-}}"
if [[ "$url" != postgresql* ]]; then
  echo "$(basename "$0"): set DATABASE_OWNER_URL or DATABASE_URL to the PostgreSQL database" >&2
  exit 2
fi
# SQLAlchemy's postgresql+asyncpg://... is libpq's postgresql://...
libpq_url="postgresql://${url#*://}"
prefix="${PORTLINE_DB_SCHEMA_PREFIX:-}"
schema_args=()
for service in intake scheduler outreach reporting; do
  schema_args+=("--schema=${prefix}${service}")
done
portline="${PORTLINE:-$(command -v portline || echo "$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/portline")}"

pg_tool() {
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN/$1"; else command -v "$1"; fi
}
