#!/bin/sh
# Sample post-install hook.
echo "post-install hook: ${FLEETUP_ROLLUP_VERSION:-?} installed"
