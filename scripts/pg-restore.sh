#!/usr/bin/env bash
# Restores a backup made by scripts/pg-backup.sh (docs/deploy.md#backups-and-restore):
#
#   scripts/pg-restore.sh DIR
#
# STOP EVERY PORTLINE SERVICE FIRST (Kafka keeps running). Restores DIR/portline.dump into the
# database (replacing the four services' schemas), runs `portline migrate` (grants, and any
# migration newer than the backup), then `portline consumers restore` (the consumer groups back
# to the backup's offsets; the scheduler's events from after the backup marked as applied).
# Then start the services. Same environment as scripts/pg-backup.sh.
set -euo pipefail
dir="${1:?usage: scripts/pg-restore.sh DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/pg-common.sh
source "$here/pg-common.sh"

for f in portline.dump kafka-position.json; do
  [[ -f "$dir/$f" ]] || { echo "pg-restore.sh: $dir/$f is missing: not a complete backup" >&2; exit 2; }
done
# The dump holds the four schemas only (pg-backup.sh), so it is restored whole: schemas too.
"$(pg_tool pg_restore)" --clean --if-exists --single-transaction --exit-on-error --no-password \
  --dbname "$libpq_url" "$dir/portline.dump"
echo "pg-restore.sh: database restored from $dir/portline.dump"
"$portline" migrate
"$portline" consumers restore --position "$dir/kafka-position.json"
