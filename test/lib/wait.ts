// Polling for a condition in tests (never a fixed sleep where a condition will do).

export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 5000, everyMs = 10): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return cond();
}
