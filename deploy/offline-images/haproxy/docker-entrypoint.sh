#!/bin/sh
# As the official image's entrypoint: options alone mean "haproxy with these options", and haproxy
# runs in the foreground (-db) as master-worker (-W), so reloads and soft stops work.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
