#!/bin/sh
# Build the native addon offline against the headers of the Node that runs us.
# node-gyp would otherwise try to download headers, and this machine has no
# network but the package registries.
set -e
cd "$(dirname "$0")/.."
if [ -z "${npm_config_nodedir:-}" ]; then
  prefix=$(dirname "$(dirname "$(command -v node)")")
  if [ -f "$prefix/include/node/node_api.h" ]; then
    npm_config_nodedir=$prefix
    export npm_config_nodedir
  fi
fi
# Inside npm scripts npm tells us where its bundled node-gyp is; by hand, use
# the one bundled with the npm next to our node.
gyp=${npm_config_node_gyp:-}
if [ -z "$gyp" ]; then
  npm_root=$(npm root -g 2>/dev/null)
  gyp="$npm_root/npm/node_modules/node-gyp/bin/node-gyp.js"
fi
if [ ! -f "$gyp" ]; then
  echo "build-native: cannot find node-gyp (looked for $gyp)" >&2
  exit 1
fi
exec node "$gyp" rebuild ${npm_config_nodedir:+--nodedir="$npm_config_nodedir"}
