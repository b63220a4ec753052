// Reading the Worker's log lines in end-to-end tests. The output streams, so a line may
// arrive just after the response it belongs to: waits are bounded polls, never sleeps.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `probe` every 100 ms until it returns a truthy value, which it resolves with;
 * fails after `ms`, with `context()` (e.g. the last output) in the error.
 */
export async function until(probe, what, ms = 30_000, context = () => '') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) {
      const more = context();
      throw new Error(`timed out after ${ms} ms waiting for ${what}${more ? `\n--- last output\n${more}` : ''}`);
    }
    await sleep(100);
  }
}

/** The Worker's JSON lines printed after offset `from` (warn/error lines carry a prefix and colours locally). */
export function logLines(worker, from = 0) {
  // eslint-disable-next-line no-control-regex
  return worker.logs().slice(from).replace(/\u001b\[[0-9;]*m/g, '').split('\n').flatMap((line) => {
    const at = line.indexOf('{"level"');
    if (at < 0) return [];
    try { return [JSON.parse(line.slice(at))]; } catch { return []; }
  });
}

/** Waits until at least `n` lines after `from` match `pred`; resolves with all matches. */
export async function linesUntil(worker, from, pred, n, what, ms) {
  let found = [];
  await until(() => {
    found = logLines(worker, from).filter(pred);
    return found.length >= n;
  }, `${n} × ${what}`, ms, () => worker.logs().slice(-4000));
  return found;
}
