#!/bin/sh
# P7 floor: roll the sample update (examples/sample-rollup) over hosts in batches, with no
# orchestration: the same steps fleetup's engine takes, in plain shell, BATCH hosts at a time.
# Usage: rolling.sh HOSTS ROLLUP_DIR DEMO_BIN BATCH
#   HOSTS: one "ROOT PORT" line per host (ROOT holds examples/base-1.0 with the demo service running).
set -eu
hosts="$1"; rollup="$2"; demo="$3"; batch="$4"

update_host() {
    root="$1"; port="$2"
    stage="$root.stage"
    rm -rf "$stage"; mkdir -p "$stage"
    cp -r "$rollup/payload" "$rollup/scripts" "$rollup/webapp" "$stage/"
    sh "$stage/scripts/precompile.sh" "$stage/payload" >/dev/null
    FLEETUP_ROLLUP_VERSION=1.1.0 FLEETUP_ROOT="$root" sh "$stage/scripts/pre-install.sh" >/dev/null
    # stop the service and wait for it to exit
    pid=$(cat "$root/run/demo.pid")
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    # replace, add, remove files
    cp "$stage/payload/lib/demo/VERSION" "$stage/payload/lib/demo/messages.txt" \
        "$stage/payload/lib/demo/feature-x.txt" "$root/lib/demo/"
    rm -f "$root/lib/demo/legacy.txt"
    sh "$stage/scripts/precompile.sh" "$root" >/dev/null
    # start and wait until healthy at the new version
    setsid "$demo" --listen "127.0.0.1:$port" --root "$root" >"$root/run/demo.log" 2>&1 </dev/null &
    echo $! >"$root/run/demo.pid"
    until curl -fs "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '1.1.0'; do sleep 0.02; done
    FLEETUP_ROLLUP_VERSION=1.1.0 sh "$stage/scripts/post-install.sh" >/dev/null
    # config patches
    sed -i 's/^cache_mb = .*/cache_mb = 256/' "$root/etc/demo.conf"
    sed -i 's/"fast_start": false/"fast_start": true/' "$root/etc/settings.json"
    sed -i 's/generatePublisherEvidence enabled="true"/generatePublisherEvidence enabled="false"/' "$root/etc/runtime.xml"
    # web app: new versioned directory, atomic switch
    mkdir -p "$root/www/releases/1.1.0"
    cp -r "$stage/webapp/." "$root/www/releases/1.1.0/"
    ln -sfn releases/1.1.0 "$root/www/current.new"
    mv -T "$root/www/current.new" "$root/www/current"
    rm -rf "$stage"
}

n=0
while read -r root port; do
    update_host "$root" "$port" &
    n=$((n + 1))
    if [ "$n" -ge "$batch" ]; then
        wait
        n=0
    fi
done <"$hosts"
wait
