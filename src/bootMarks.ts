// Milestones of this image's boot, in ms since the process image started
// (performance.timeOrigin is reset by execve). The re-exec log line reports
// them so the blackout can be broken down: Node start, module loading,
// argument parsing, validation, adoption.

const marks: Record<string, number> = {};
const entry = (globalThis as { __relockdEntryMs?: number }).__relockdEntryMs;
if (entry !== undefined) marks.entry = entry;

export function mark(name: string): void {
  marks[name] = Math.round(performance.now() * 10) / 10;
}

export function bootMarks(): Record<string, number> {
  return { ...marks };
}
