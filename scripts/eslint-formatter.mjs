// eslint formatter for `npm run lint`: one finding per line,
// `path:line:col  rule  message`, relative to the repo (grep- and
// editor-friendly; eslint 10 no longer ships the unix/compact formatters).
import { relative } from 'node:path';

export default function format(results) {
  const lines = [];
  for (const r of results) {
    for (const m of r.messages) {
      lines.push(`${relative(process.cwd(), r.filePath)}:${m.line ?? 0}:${m.column ?? 0}  ${m.ruleId ?? 'parse'}  ${m.message}`);
    }
  }
  return lines.length ? `${lines.join('\n')}\n${lines.length} lint problem(s)\n` : '';
}
