#!/bin/sh
# Sample pre-install hook: a real one might stop a third-party service or back up data.
echo "pre-install hook: installing ${FLEETUP_ROLLUP_VERSION:-?} into ${FLEETUP_ROOT:-?}"
