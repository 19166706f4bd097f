// m2 serve as a distributed job (two ranks under mpirun): greedy output equal to one process, and a
// rank killed mid-request ends the job with a non-zero exit and a message naming the rank, in
// bounded time (no hang).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './harness.mjs';

const MPIRUN = process.env.M2_MPIRUN;
if (!MPIRUN) throw new Error('M2_MPIRUN must be set (run through ctest)');
const launcher = [MPIRUN, '--oversubscribe', '-np', '2'];

async function complete(server, prompt, max_tokens = 24) {
  const r = await server.client().completions.create({ model: 'tiny-m2-demo', prompt, max_tokens, temperature: 0 });
  return r.choices[0].text;
}

// Plain tensor parallelism is served through the whole OpenAI suite (Server.OpenAiApiTp2) and its
// output compared with one process's by m2 run (Distributed.CommandLine).
test('expert and pipeline parallel servers answer as one process does', async () => {
  const one = await startServer(['--threads', '1'], { launcher: [], serveArgs: [] });
  const prompts = ['Once upon a time', 'def fib(n):'];
  const want = [];
  for (const p of prompts) want.push(await complete(one, p));
  assert.equal(await one.stop(), 0);
  for (const args of [['--tensor-parallel-size', '2', '--enable-expert-parallel'],
                      ['--pipeline-parallel-size', '2', '--pipeline-layers', '3,1']]) {
    const server = await startServer(['--threads', '1', ...args], { launcher, serveArgs: [] });
    for (let i = 0; i < prompts.length; i++) assert.equal(await complete(server, prompts[i]), want[i], args.join(' '));
    assert.equal(await server.stop(), 0, `${args.join(' ')}: SIGTERM to rank 0 ends every rank with exit 0`);
  }
});

test('a rank killed mid-request ends the job naming the rank', async () => {
  const server = await startServer(['--threads', '1', '--tensor-parallel-size', '2'], { launcher, serveArgs: [] });
  const exited = new Promise((resolve) => server.proc.once('exit', (code, signal) => resolve({ code, signal })));
  const stream = server.client().completions.create({
    model: 'tiny-m2-demo', prompt: 'Once upon a time', max_tokens: 3000, stream: true, ignore_eos: true,
  });
  let received = 0;
  const reading = (async () => {
    try {
      for await (const chunk of await stream) {
        received += chunk.choices.length;
        if (received === 5) process.kill(server.rankPid(1), 'SIGKILL');
      }
      return 'ended';
    } catch (e) {
      return 'error';
    }
  })();
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), 60000); });
  const outcome = await Promise.race([exited, timeout]);
  clearTimeout(timer);
  assert.notEqual(outcome, 'timeout', `the job did not end within 60 s of the kill:\n${server.stderr}`);
  assert.notEqual(outcome.code, 0, 'the job exits non-zero');
  assert.match(server.stderr, /rank 1/, 'the failure names rank 1');
  assert.ok(received >= 5, 'the request was streaming when the rank was killed');
  assert.ok(['error', 'ended'].includes(await reading));
});
