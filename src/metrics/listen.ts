// `metrics_listen`: where the optional HTTP metrics listener binds. An
// absolute path is a UNIX socket; otherwise an IP literal and a port
// ("127.0.0.1:9855", "[::1]:9855"). No host names (no DNS at start) and no
// wildcard address: a root daemon's listener goes on an address the admin
// chose, loopback unless they decide otherwise (a warning says so).

import { isIP } from 'node:net';

export type MetricsListen = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number; loopback: boolean };

class MetricsListenError extends Error {
  override name = 'MetricsListenError';
}

export function parseMetricsListen(spec: string): MetricsListen {
  if (spec.startsWith('/')) return { kind: 'unix', path: spec };
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(spec);
  if (!m) throw new MetricsListenError(`metrics_listen '${spec}' is neither an absolute socket path nor ADDRESS:PORT (e.g. 127.0.0.1:9855 or [::1]:9855)`);
  const host = (m[1] ?? m[2])!;
  const port = Number(m[3]);
  if (!(port >= 1 && port <= 65535)) throw new MetricsListenError(`metrics_listen '${spec}': port must be 1 to 65535`);
  const family = isIP(host);
  if (family === 0) throw new MetricsListenError(`metrics_listen '${spec}': '${host}' is not an IP address (host names are not resolved)`);
  if (family === 6 && m[1] === undefined) throw new MetricsListenError(`metrics_listen '${spec}': write an IPv6 address in brackets, e.g. [::1]:${port}`);
  if (host === '0.0.0.0' || /^[0:]+$/.test(host)) throw new MetricsListenError(`metrics_listen '${spec}': a wildcard address would serve metrics on every interface; give a specific address (127.0.0.1 for this host only)`);
  const loopback = family === 4 ? host.startsWith('127.') : host === '::1' || /^(0{0,4}:){7}0{0,3}1$/.test(host);
  return { kind: 'tcp', host, port, loopback };
}
