// Renders docs/errors.md's generated part from the error catalogue and the
// exit codes of relockd and relockctl (test/errors.test.ts compares; RELOCKD_WRITE_ERRORS_DOC=1 writes).

import { catalogue } from '../../src/util/errorCatalogue.js';
import type { CatalogueEntry } from '../../src/util/errorCatalogue.js';
import { ErrorCode, ErrorDomain } from '../../src/util/errors.js';
import { EXIT_CODE_USES, ExitCode } from '../../src/daemon/exitCode.js';
import { EXIT_USES, Exit } from '../../src/ctl/command.js';

export const START = '<!-- generated from src/util/errorCatalogue.ts, src/daemon/exitCode.ts and src/ctl/command.ts: do not edit by hand -->';
export const END = '<!-- end of generated part -->';

const nameOf = (table: Record<string, number>, v: number) => Object.keys(table).find((k) => table[k] === v);

function codeName(v: number): string {
  const n = nameOf(ErrorCode, v);
  return n ? `VIR_ERR_${n} (${v})` : `?? (${v})`;
}

function domainName(v: number): string {
  const n = nameOf(ErrorDomain, v);
  return n ? `VIR_FROM_${n} (${v})` : `?? (${v})`;
}

/** The message text a client sees, with {placeholders}. */
export function messageOf(e: CatalogueEntry): string {
  switch (e.kind) {
    case 'report':
      return e.format.replace('%s', e.detail);
    case 'system':
      return `${e.detail}: <strerror(errno)>`;
    default:
      return e.detail;
  }
}

const cell = (s: string) => '`' + s.replace(/\|/g, '\\|') + '`';
const text = (s: string) => s.replace(/\|/g, '\\|');

/** One program's exit statuses: name, value, and when it is used. */
function exitTable<K extends string>(program: string, values: Readonly<Record<K, number>>, uses: Readonly<Record<K, string>>): string[] {
  const rows = (Object.keys(values) as K[]).map((name) => `| ${name} | ${values[name]} | ${text(uses[name])} |`);
  return ['', `### Exit statuses of \`${program}\``, '', '| Name | Status | When |', '|---|---|---|', ...rows];
}

export function renderErrorsDoc(): string {
  const lines = [START, '', '### Wire errors', ''];
  lines.push('| Name | Code | Domain | Message | Sent when |', '|---|---|---|---|---|');
  for (const e of catalogue()) {
    lines.push(`| ${e.name} | ${codeName(e.code)} | ${domainName(e.domain)} | ${cell(messageOf(e))} | ${text(e.when)} |`);
  }
  lines.push(...exitTable('relockd', ExitCode, EXIT_CODE_USES), ...exitTable('relockctl', Exit, EXIT_USES), '', END);
  return lines.join('\n');
}
