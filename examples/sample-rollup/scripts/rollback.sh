#!/bin/sh
# Sample rollback hook: runs after files are restored, before services start again.
echo "rollback hook: ${FLEETUP_ROLLUP_VERSION:-?} was rolled back"
