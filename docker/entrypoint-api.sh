#!/bin/sh
# Start the API. Migrations are applied by the separate `migrate` job (docker-compose), not here,
# so several API replicas never race on them.
set -eu
exec uvicorn api.main:create_app --factory --host 0.0.0.0 --port "${DGMSCAN_PORT:-8000}" \
  --workers "${DGMSCAN_API_WORKERS:-2}" --proxy-headers --timeout-graceful-shutdown 20
