#!/bin/sh
# Celery worker. The parent process imports no torch; scans run in the pool's child processes.
set -eu
exec celery -A worker.celery_app worker -Q "${DGMSCAN_QUEUES:-cpu}" \
  --concurrency "${DGMSCAN_CONCURRENCY:-2}" --loglevel "${DGMSCAN_LOGLEVEL:-INFO}" \
  --without-gossip --without-mingle
