#!/bin/sh
# Build the native addon offline against the headers of the Node that runs us.
# node-gyp would otherwise try to download headers, and this machine has no
# network but the package registries.
set -e
if [ -z "${npm_config_nodedir:-}" ]; then
  prefix=$(dirname "$(dirname "$(command -v node)")")
  if [ -f "$prefix/include/node/node_api.h" ]; then
    npm_config_nodedir=$prefix
    export npm_config_nodedir
  fi
fi
exec node-gyp rebuild ${npm_config_nodedir:+--nodedir="$npm_config_nodedir"}
