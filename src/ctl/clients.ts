// `relockctl clients`: the connections on relockd's sockets, with their
// registered owner and restriction, as a table or JSON.

import type { ClientInfo } from '../protocol/relockdAdmin.js';
import { Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { withAdmin } from './connection.js';
import { formatTable, formatTime } from './format.js';
import { json, out } from './output.js';

export interface ClientsArgs extends GlobalArgs {
  server?: string;
}

export async function cmdClients(a: ClientsArgs): Promise<number> {
  const list = await withAdmin(a, (c) => c.clients(a.server && a.server !== 'all' ? a.server : null));
  if (a.json) {
    json(list);
    return Exit.OK;
  }
  if (list.length === 0) {
    out('no clients');
    return Exit.OK;
  }
  out(renderClients(list));
  return Exit.OK;
}

function renderClients(list: ClientInfo[]): string {
  const rows = list.map((c) => [
    c.server,
    String(c.id),
    String(c.pid),
    String(c.uid),
    formatTime(c.connTime * 1000),
    c.owner ? c.owner.name : '-',
    c.owner ? String(c.owner.pid) : '-',
    c.owner ? c.owner.uuid : '-',
    c.server === 'admin' ? '-' : c.restricted ? 'yes' : 'no',
    c.owner ? `${c.leases}${c.ownerConnection ? ' (owner connection)' : ''}` : '-',
  ]);
  return formatTable(['SERVER', 'ID', 'PID', 'UID', 'CONNECTED', 'OWNER', 'OWNER PID', 'OWNER UUID', 'RESTRICTED', 'LEASES'], rows);
}
