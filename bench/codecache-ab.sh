#!/bin/bash
# A/B of the re-exec code cache (src/daemon/codeCache.ts) on one daemon:
# 16 re-execs 1.5 s apart; before every second one the cache file is removed,
# so that image compiles from source. Prints each re-exec's boot marks and the
# medians of module loading with and without the cache.
#   bench/codecache-ab.sh        (after npm run build; not a test)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=$(mktemp -d)
env -u NODE_OPTIONS -u NODE_EXTRA_CA_CERTS node --experimental-permission --allow-fs-read=* --allow-fs-write=* \
  --allow-addons --allow-child-process --no-warnings "$ROOT/bin/relockd.cjs" --runtime-dir "$D" --socket "$D/s" --log-level info 2>"$D/log" &
P=$!
sleep 3
for i in $(seq 1 16); do
  if [ $((i % 2)) = 0 ]; then rm -f "$D/relockd-restart-exec.v8cache"; fi
  kill -USR1 $P; sleep 1.5
done
kill $P; wait $P
grep '"msg":"re-exec complete"' "$D/log" > "$D/rx"
grep '"msg":"relockd ready"' "$D/log" | tail -n +2 > "$D/ready"
paste -d' ' <(grep -o '"codeCache":"[a-z]*"' "$D/ready") <(grep -o '"bootMs":{[^}]*}' "$D/rx") <(grep -o '"blackoutMs":[0-9.]*' "$D/rx") | tee "$D/out"
python3 - "$D/out" <<'PY'
import re, statistics, sys
rows = {}
for l in open(sys.argv[1]):
    m = re.search(r'"codeCache":"(\w+)".*"entry":([\d.]+),"modules":([\d.]+).*"adopted":([\d.]+).*"blackoutMs":([\d.]+)', l)
    if m:
        rows.setdefault(m.group(1), []).append(tuple(map(float, m.groups()[1:])))
for k, v in rows.items():
    print(f'{k}: {len(v)} re-execs; median modules {statistics.median(x[1]-x[0] for x in v):.1f} ms, '
          f'adopted at {statistics.median(x[2] for x in v):.1f} ms, blackoutMs {statistics.median(x[3] for x in v):.1f}')
PY
rm -rf "$D"
