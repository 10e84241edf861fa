#!/usr/bin/env bash
# A backup of PORTline's database, with Kafka's side of it (docs/deploy.md#backups-and-restore):
#
#   scripts/pg-backup.sh DIR
#
# writes DIR/kafka-position.json (every consumer group's committed offsets and the topics' end
# offsets: `portline consumers position`) and THEN DIR/portline.dump (`pg_dump -Fc` of the four
# services' schemas). The order matters: everything before the recorded offsets is in the dump.
# Runs while the services run. Reads the services' settings from the environment:
#   DATABASE_OWNER_URL (else DATABASE_URL)  the database, as a SQLAlchemy URL
#   PORTLINE_DB_SCHEMA_PREFIX, KAFKA_BOOTSTRAP_SERVERS
#   PG_BIN       where pg_dump is (default: on PATH)
#   PORTLINE     the portline command (default: on PATH, else .venv/bin/portline)
set -euo pipefail
dir="${1:?usage: scripts/pg-backup.sh DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/pg-common.sh
source "$here/pg-common.sh"

mkdir -p "$dir"
if [[ -e "$dir/portline.dump" ]]; then
  echo "pg-backup.sh: $dir already holds a backup; use a new directory" >&2
  exit 2
fi
"$portline" consumers position --output "$dir/kafka-position.json.tmp"
"$(pg_tool pg_dump)" --format=custom --no-password "${schema_args[@]}" \
  --file "$dir/portline.dump.tmp" --dbname "$libpq_url"
mv "$dir/kafka-position.json.tmp" "$dir/kafka-position.json"
mv "$dir/portline.dump.tmp" "$dir/portline.dump"
echo "pg-backup.sh: backup complete in $dir"
