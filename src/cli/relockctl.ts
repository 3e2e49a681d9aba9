// `relockctl`: the operator's view of relockd, over the admin socket
// (relockd's own admin program), plus `run` (hold leases for a command's
// lifetime, over the main socket) and `cleanup` (remove lease files nobody
// holds). Every command prints an aligned table for people, or one JSON
// document with --json. See docs/admin.md.
//
// This module only parses the command line and maps each command to its
// implementation in src/ctl/; it prints errors and returns exit statuses.

import yargs from 'yargs';
import type { Argv } from 'yargs';
import { RemoteError } from '../rpc/client.js';
import { VERSION } from '../version.js';
import { cmdCleanup } from '../ctl/cleanup.js';
import { cmdClients } from '../ctl/clients.js';
import { CtlError, Exit } from '../ctl/command.js';
import type { GlobalArgs } from '../ctl/command.js';
import { cmdLeases } from '../ctl/leases.js';
import { err, out } from '../ctl/output.js';
import { cmdReexec } from '../ctl/reexec.js';
import { cmdMetrics } from '../ctl/metrics.js';
import { cmdRun } from '../ctl/run.js';
import { cmdStatus } from '../ctl/status.js';
import { cmdTakeover } from '../ctl/takeover.js';
import { cmdHandback } from '../ctl/handback.js';
import { cmdHealth, cmdLibvirtKillpath, cmdReleaseLeases } from '../ctl/lockFailure.js';

// ---- the command line ------------------------------------------------------------------------------------------

function globalOptions(y: Argv): Argv<GlobalArgs> {
  return y
    .option('socket', { type: 'string', describe: 'main socket of relockd (used by run)' })
    .option('admin-socket', { type: 'string', describe: 'admin socket of relockd' })
    .option('runtime-dir', { type: 'string', describe: "relockd's --runtime-dir: sockets are looked up there" })
    .option('json', { type: 'boolean', default: false, describe: 'print one JSON document (errors too) instead of text' })
    .option('timeout', { type: 'number', default: 30, describe: 'seconds to wait for relockd to answer' }) as unknown as Argv<GlobalArgs>;
}

type Handler = (a: any) => Promise<number>;

export function buildParser(argv: string[], onCommand: (h: Handler, a: unknown) => void): Argv {
  const y = globalOptions(yargs(argv))
    .scriptName('relockctl')
    .usage('$0 <command> [options]\n\nInspect and operate relockd (see docs/admin.md).')
    .parserConfiguration({ 'populate--': true })
    .command('status', 'daemon, clients, leases by lock space, last re-exec', {}, (a) => onCommand(cmdStatus, a))
    .command(
      'leases',
      'leases held, with owners and since when',
      (c) =>
        c
          .option('lockspace', { type: 'string', describe: "only this lock space ('' for the default one)" })
          .option('owner', { type: 'string', describe: 'only leases of this owner: NAME, UUID or PID' }),
      (a) => onCommand(cmdLeases, a),
    )
    .command(
      'clients',
      'connections, with their registered owner and restriction',
      (c) => c.option('server', { type: 'string', choices: ['virtlockd', 'admin', 'all'], default: 'all', describe: 'which socket' }),
      (a) => onCommand(cmdClients, a),
    )
    .command(
      'metrics',
      'Prometheus metrics (text format), for a scrape or node_exporter\'s textfile collector',
      (c) => c.option('output', { alias: 'o', type: 'string', describe: 'write to FILE atomically (e.g. /var/lib/prometheus/node-exporter/relockd.prom)' }),
      (a) => onCommand(cmdMetrics, a),
    )
    .command('reexec', 're-exec relockd in place (no lease is dropped); prints the blackout time', {}, (a) => onCommand(cmdReexec, a))
    .command(
      'cleanup <dir>',
      'list (or with --apply remove) lease files in DIR that nobody holds',
      (c) =>
        c
          .positional('dir', { type: 'string', demandOption: true, describe: 'lock-space directory' })
          .option('apply', { type: 'boolean', default: false, describe: 'remove the files (default: dry run)' })
          .option('include-nonempty', { type: 'boolean', default: false, describe: 'also consider files that are not empty' })
          .option('verbose', { alias: 'v', type: 'boolean', default: false, describe: 'list every file, not only removable ones' })
          .option('progress', { type: 'boolean', describe: 'progress line on stderr (default: for 1000 files or more)' }),
      (a) => onCommand(cmdCleanup, a),
    )
    .command(
      'run',
      'run a command holding leases for exactly its lifetime: run --lease PATH[:shared] ... -- COMMAND [ARGS...]',
      (c) =>
        c
          .option('lease', { type: 'string', array: true, default: [] as string[], describe: 'PATH[:shared]; with --lockspace, NAME[:shared] is a lease file in that directory (created as needed)' })
          .option('lockspace', { type: 'string', describe: 'lock-space directory for bare lease names' })
          .option('name', { type: 'string', describe: 'owner name shown by leases/clients (default: the command name)' })
          .option('uuid', { type: 'string', describe: 'owner UUID (default: random)' }),
      (a) => onCommand(cmdRun, { ...a, command: ((a as Record<string, unknown>)['--'] as string[] | undefined)?.map(String) ?? [] }),
    )
    .command(
      'takeover',
      'switch a running virtlockd to relockd in place: same pid, every lease and connection kept (docs/takeover.md)',
      (c) =>
        c
          .option('pid', { type: 'number', describe: "virtlockd's pid (default: from its pid file)" })
          .option('virtlockd-pid-file', { type: 'string', describe: "virtlockd's pid file (default /run/virtlockd.pid)" })
          .option('wait', { type: 'number', default: 30, describe: 'seconds to wait for connections that may not have registered yet' })
          .option('assume-registered', { type: 'boolean', default: false, describe: 'treat lock connections whose peer is neither QEMU nor libvirt as registered' })
          .option('systemd', { type: 'string', choices: ['auto', 'yes', 'no'], default: 'auto', describe: 'install the virtlockd.service drop-in (auto: when virtlockd runs in virtlockd.service)' })
          .option('unit-dir', { type: 'string', default: '/etc/systemd/system', describe: 'where the drop-in goes' })
          .option('systemctl', { type: 'string', default: 'systemctl', describe: 'systemctl to run daemon-reload with' })
          .option('relockd-arg', { type: 'string', array: true, default: [] as string[], describe: "extra relockd argument for the new image (repeatable), e.g. --relockd-arg=--lockspace=/var/lib/libvirt/lockd/files" }),
      (a) => onCommand(cmdTakeover, a),
    )
    .command(
      'handback',
      'switch relockd back to the real virtlockd in place: same pid, leases kept; handback [options] [-- VIRTLOCKD-ARGS...]',
      (c) =>
        c
          .option('virtlockd', { type: 'string', default: '/usr/sbin/virtlockd', describe: "virtlockd's binary" })
          .option('wait', { type: 'number', default: 30, describe: 'seconds to retry refusals that clear by themselves' })
          .option('trial', { type: 'boolean', default: true, describe: 'first start virtlockd with these arguments in a throwaway private namespace (--no-trial: skip)' })
          .option('systemd', { type: 'string', choices: ['auto', 'yes', 'no'], default: 'auto', describe: 'remove the virtlockd.service drop-in (auto: when running in virtlockd.service)' })
          .option('unit-dir', { type: 'string', default: '/etc/systemd/system', describe: 'where the drop-in is' })
          .option('systemctl', { type: 'string', default: 'systemctl', describe: 'systemctl to run daemon-reload with' }),
      (a) => onCommand(cmdHandback, { ...a, virtlockdArgs: ((a as Record<string, unknown>)['--'] as string[] | undefined)?.map(String) ?? [] }),
    )
    .command('health', 'lock spaces on remote storage: healthy, failing, failed, recovering; owners being handled', {}, (a) => onCommand(cmdHealth, a))
    .command(
      'release-leases',
      "for killpath programs: the owner is safe now, release its leases in the failed lock space",
      (c) =>
        c
          .option('owner', { type: 'string', describe: 'PID, NAME or UUID (default: $RELOCKD_OWNER_PID)' })
          .option('lockspace', { type: 'string', describe: "lock space ('' for the default one; default: $RELOCKD_LOCKSPACE)" }),
      (a) => onCommand(cmdReleaseLeases, a),
    )
    .command(
      'libvirt-killpath <event> [uuid]',
      'the killpath program for libvirt (lock_failure_action = pause): fail suspends the domain and releases its leases, resume resumes it',
      (c) =>
        c
          .positional('event', { type: 'string', choices: ['fail', 'resume'], demandOption: true })
          .positional('uuid', { type: 'string', describe: 'domain uuid (default: $RELOCKD_OWNER_UUID)' })
          .option('uri', { type: 'string', default: 'qemu:///system', describe: 'libvirt connection URI' }),
      (a) => onCommand(cmdLibvirtKillpath, a),
    )
    .demandCommand(1, 'give a command: status, leases, clients, metrics, health, reexec, cleanup, run, takeover, handback, release-leases or libvirt-killpath')
    .version('version', 'show version', `relockctl (relockd) ${VERSION}`)
    .alias('version', 'V')
    .help('help')
    .alias('help', 'h')
    .strict()
    .wrap(Math.min(110, process.stdout.columns ?? 80));
  return y;
}

/** Runs relockctl; resolves with the exit status (run: only on failure). */
export async function runCli(argv: string[]): Promise<number> {
  let chosen: { h: Handler; a: unknown } | null = null;
  // Only relockctl's own arguments: what follows `--` belongs to run's command.
  const own = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  const wantsJson = own.includes('--json');
  try {
    let usageError: string | null = null;
    await buildParser(argv, (h, a) => (chosen = { h, a }))
      .fail((msg, e) => {
        usageError = e ? e.message : msg;
      })
      .parseAsync();
    if (usageError) throw new CtlError(usageError, Exit.USAGE);
    if (!chosen) return Exit.OK; // --help, --version
    const { h, a } = chosen as { h: Handler; a: unknown };
    checkTimeout((a as GlobalArgs).timeout, own);
    return await h(a);
  } catch (e) {
    const ce =
      e instanceof CtlError
        ? e
        : e instanceof RemoteError
          ? new CtlError(`relockd: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain })
          : new CtlError((e as Error).message ?? String(e), Exit.ERROR);
    if (wantsJson) {
      const doc = JSON.stringify({ error: { message: ce.message, exitCode: ce.exitCode, ...ce.details } }, null, 2);
      // run's stdout belongs to the command; everything else reports on stdout.
      if (own.includes('run')) err(doc);
      else out(doc);
    } else {
      err(`relockctl: ${ce.message}`);
    }
    return ce.exitCode;
  }
}

/** --timeout: seconds, > 0, within what a Node timer can wait (NaN from "abc" would mean: never). */
function checkTimeout(v: number, argv: string[]): void {
  if (Number.isFinite(v) && v > 0 && v <= 2147483) return;
  const given = argv[argv.findIndex((x) => x === '--timeout') + 1] ?? argv.find((x) => x.startsWith('--timeout='))?.slice(10) ?? String(v);
  throw new CtlError(`--timeout takes a number of seconds from 0.001 to 2147483, not '${given}'`, Exit.USAGE);
}

export async function main(argv: string[]): Promise<void> {
  process.stdout.on('error', () => {});
  const code = await runCli(argv);
  // A one-shot command: once it has answered, nothing (a connection a
  // daemon never answered on, a timer) may keep it running. stdout and
  // stderr are synchronous for files and pipes on Linux, so nothing is lost.
  process.exit(code);
}
