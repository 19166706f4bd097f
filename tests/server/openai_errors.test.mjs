// Bad input through the `openai` client (and raw HTTP where the client would not send it): every
// case gets its status and OpenAI's error shape, and the server keeps serving. API keys.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer } from './harness.mjs';

let server, client;
before(async () => {
  server = await startServer(['--served-model-name', 'demo', '--max-model-len', '256', '--max-body-size', '64KiB']);
  client = server.client();
});
after(async () => { assert.equal(await server.stop(), 0); });

const user = (text) => [{ role: 'user', content: text }];

// The error class the official client raises, its status, and the message.
async function expectError(promise, Cls, status, pattern) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof Cls, `expected ${Cls.name}, got ${e.constructor.name}: ${e.message}`);
    assert.equal(e.status, status);
    assert.match(e.message, pattern);
    return true;
  });
}

async function raw(path, body, headers = {}) {
  const r = await fetch(`${server.url}${path}`, { method: 'POST', body, headers: { 'Content-Type': 'application/json', ...headers } });
  return { status: r.status, json: await r.json() };
}

test('malformed JSON and non-object bodies are 400 in OpenAI error shape', async () => {
  for (const body of ['{"model": "demo", "messages": [', '[1, 2]', '"hi"', '']) {
    const r = await raw('/v1/chat/completions', body);
    assert.equal(r.status, 400, body);
    assert.equal(r.json.error.type, 'invalid_request_error');
    assert.equal(r.json.error.code, 400);
    assert.match(r.json.error.message, /not valid JSON|must be a JSON object/);
  }
});

test('wrong types name the field', async () => {
  const cases = [
    [{ temperature: 'hot' }, /'temperature' must be a number, found string/],
    [{ max_tokens: 2.5 }, /'max_tokens' must be an integer/],
    [{ stream: 'yes' }, /'stream' must be a boolean/],
    [{ stop: [1] }, /'stop' must be a string or a list of strings/],
    [{ seed: 'x' }, /'seed' must be an integer/],
    [{ messages: 'hi' }, /'messages' must be a list of messages/],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, /'messages\[0\]\.role' = 'wizard'/],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, /only text content/],
    [{ messages: [] }, /must not be empty/],
    [{ tools: [{ type: 'function', function: {} }] }, /'tools\[0\]\.function\.name' is required/],
    [{ tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: 'g' } } }, /names 'g'/],
    [{ tools: [{ type: 'function', function: { name: 'f' } }] }, /requires --enable-auto-tool-choice/],
    [{ messages: [{ role: 'assistant', content: '', tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{bad' } }] }] },
      /arguments' is not valid JSON/],
  ];
  for (const [extra, pattern] of cases)
    await expectError(client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 2, ...extra }),
      OpenAI.BadRequestError, 400, pattern);
});

test('bad sampling values and limits', async () => {
  const cases = [
    [{ top_p: 2 }, /top_p = 2 is out of range/],
    [{ temperature: -1 }, /temperature = -1 is out of range/],
    [{ top_k: -5 }, /'top_k' = -5 is out of range/],
    [{ n: 0 }, /'n' = 0 is out of range/],
    [{ n: 100 }, /'n' = 100 is out of range/],
    [{ max_tokens: 0 }, /'max_tokens' must be at least 1/],
    [{ logprobs: true, top_logprobs: 50 }, /'top_logprobs' = 50 is out of range/],
    [{ presence_penalty: 9 }, /presence_penalty = 9 is out of range/],
    [{ max_tokens: 1000 }, /maximum context length is 256 tokens/],
    [{ max_tokens: 1e300 }, /'max_tokens' must be an integer/],  // once an undefined double → int64 cast
    [{ seed: -1e30 }, /'seed' must be an integer/],
  ];
  for (const [extra, pattern] of cases)
    await expectError(client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 2, ...extra }),
      OpenAI.BadRequestError, 400, pattern);
  await expectError(client.completions.create({ model: 'demo', prompt: 'word '.repeat(300), max_tokens: 2 }),
    OpenAI.BadRequestError, 400, /maximum context length is 256 tokens\. However, your request has \d+ input tokens/);
  await expectError(client.completions.create({ model: 'demo', prompt: [1, 99999], max_tokens: 2 }),
    OpenAI.BadRequestError, 400, /token ids in \[0, 8192\)/);
});

test('unknown model is 404; unknown route is 404; body over the limit is 413', async () => {
  await expectError(client.chat.completions.create({ model: 'gpt-9', messages: user('hi') }), OpenAI.NotFoundError, 404,
    /The model 'gpt-9' does not exist/);
  const r = await raw('/v1/nothing', '{}');
  assert.equal(r.status, 404);
  assert.equal(r.json.error.type, 'not_found_error');
  await expectError(client.chat.completions.create({ model: 'demo', messages: user('x'.repeat(100000)) }), OpenAI.APIError, 413,
    /larger than the limit of 65536 bytes/);
});

test('unknown fields are ignored', async () => {
  const r = await client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 2, frobnicate: { a: 1 },
    response_format: { type: 'text' }, user: 'someone' });
  assert.equal(r.choices.length, 1);
});

test('the server keeps serving after every error, and counts them', async () => {
  const r = await client.chat.completions.create({ model: 'demo', messages: user('still there?'), max_tokens: 3 });
  assert.equal(r.usage.completion_tokens <= 3, true);
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
  const m = await server.metrics();
  assert.ok(m['m2:http_errors_total{model_name="demo",status="400"}'] >= 20);
  assert.equal(m['m2:http_errors_total{model_name="demo",status="404"}'], 2);
  assert.equal(m['m2:http_errors_total{model_name="demo",status="413"}'], 1);
});

test('--api-key: Bearer (or x-api-key) required on the API, 401 otherwise', async () => {
  const secured = await startServer(['--api-key', 's3cret', '--served-model-name', 'demo']);
  try {
    await expectError(secured.client().chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 1 }),
      OpenAI.AuthenticationError, 401, /invalid or missing API key/);
    await expectError(secured.client({ apiKey: 'wrong' }).models.list(), OpenAI.AuthenticationError, 401, /API key/);
    const ok = await secured.client({ apiKey: 's3cret' }).chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 1 });
    assert.equal(ok.choices.length, 1);
    const viaHeader = await fetch(`${secured.url}/v1/models`, { headers: { 'x-api-key': 's3cret' } });
    assert.equal(viaHeader.status, 200);
    assert.equal((await fetch(`${secured.url}/health`)).status, 200, 'health needs no key');
  } finally {
    assert.equal(await secured.stop(), 0);
  }
});
