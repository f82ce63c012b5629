#!/bin/sh
# registry:2's entrypoint, for Entrepot: a config file alone means `serve` it, a subcommand
# (`garbage-collect CONFIG`, `check-config`, ...) runs the `entrepot` command, anything else
# runs as given (`docker run --rm entrepot sh`).
set -e

case "$1" in
    *.yaml|*.yml) set -- entrepot serve "$@" ;;
    serve|check-config|garbage-collect|healthcheck|-*) set -- entrepot "$@" ;;
esac

exec "$@"
