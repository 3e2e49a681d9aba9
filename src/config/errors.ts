// The one error type of the configuration code: every problem names the
// file, the line (and column) and, when it is about a setting, the key.

export interface ConfigProblem {
  file: string;
  /** 1-based; 0 when the problem is about the file as a whole. */
  line: number;
  /** 1-based; 0 when unknown. */
  column: number;
  /** The setting concerned, if any. */
  key?: string;
  /** What is wrong and what was expected, without the location. */
  message: string;
}

/** "file:line:column: message" (line and column left out when unknown). */
export function formatProblem(p: ConfigProblem): string {
  const where = p.line > 0 ? `${p.file}:${p.line}${p.column > 0 ? `:${p.column}` : ''}` : p.file;
  return `${where}: ${p.message}`;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(readonly problems: ConfigProblem[]) {
    super(problems.map(formatProblem).join('\n'));
  }

  /** The first problem's file (every problem of one load is in the same file). */
  get file(): string {
    return this.problems[0]?.file ?? '';
  }

  get line(): number {
    return this.problems[0]?.line ?? 0;
  }

  get key(): string | undefined {
    return this.problems[0]?.key;
  }
}
