// Reading the Worker's log lines in end-to-end tests. The output streams, so a line may
// arrive just after the response it belongs to: waits are bounded polls, never sleeps.
// And the Worker's info lines (console.log) reach wrangler's stdout while its warn, error
// and alert lines reach its stderr: two pipes, so a line proves nothing about a line of
// the other stream. Find each line by what it says (an event id, a session id, the
// message), never as "the next line after a mark".

import assert from 'node:assert/strict';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*m/g;

/** A log line's JSON object (a Worker line, after wrangler's "▲ [WARNING]" and colours), or undefined. */
function parseLine(line) {
  const at = line.indexOf('{"level"');
  if (at < 0) return undefined;
  try { return JSON.parse(line.slice(at)); } catch { return undefined; }
}

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
  return worker.logs().slice(from).replace(ANSI, '').split('\n').flatMap((line) => {
    const parsed = parseLine(line);
    return parsed === undefined ? [] : [parsed];
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

const WAIT_POLL_MS = 25;
const TAIL_CHARS = 6_000;

/**
 * Waits (bounded) for one line `worker` printed after offset `from` (a `worker.logs().length`
 * taken before the request) that `match` picks, and resolves with it: the parsed object for a
 * Worker JSON line, else the line's text.
 *
 * `match` is a predicate called with each Worker JSON line, parsed (pick by what the line
 * says: its event id, session id, message), or a RegExp tested against each complete line
 * with its colours removed (for wrangler's own lines, e.g. `QUEUE … 1/2`). Only complete
 * lines count. Fails after `timeoutMs` naming what it waited for (`what`, or the pattern)
 * and the log since `from`.
 */
export async function waitForLine(worker, match, { from = 0, timeoutMs = 10_000, what } = {}) {
  const test = match instanceof RegExp
    ? (text) => { match.lastIndex = 0; return match.test(text); }
    : (text, parsed) => parsed !== undefined && Boolean(match(parsed));
  const deadline = Date.now() + timeoutMs;
  let scanned = from; // the log before this offset has been read, line by line
  for (;;) {
    const output = worker.logs();
    const end = output.lastIndexOf('\n') + 1; // a line still being written waits for its end
    if (end > scanned) {
      for (const raw of output.slice(scanned, end).split('\n')) {
        const text = raw.replace(ANSI, '').replace(/\r$/, '');
        const parsed = parseLine(text);
        if (test(text, parsed)) return parsed ?? text;
      }
      scanned = end;
    }
    if (Date.now() >= deadline) {
      const since = output.slice(from);
      const tail = since.length > TAIL_CHARS ? `…${since.slice(-TAIL_CHARS)}` : since;
      assert.fail(
        `no log line matching ${what ? `${what}: ` : ''}${String(match)} within ${timeoutMs} ms\n` +
          `--- log since offset ${from} (${since.length} chars)\n${tail.replace(ANSI, '')}`,
      );
    }
    await sleep(WAIT_POLL_MS);
  }
}
