// m2 serve on the demo model, driven by the official `openai` npm client: chat and completions,
// streaming and not, seeds, stop strings, logprobs, n > 1, usage, tokenize/detokenize, models,
// /metrics, /health, /version.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './harness.mjs';

let server, client;
before(async () => {
  server = await startServer(['--served-model-name', 'demo', 'tiny-m2-demo']);
  client = server.client();
});
after(async () => {
  assert.equal(await server.stop(), 0, 'SIGTERM ends the server with exit code 0');
});

const user = (text) => [{ role: 'user', content: text }];

test('models, health and version', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['demo', 'tiny-m2-demo']);
  assert.equal(models.data[0].max_model_len, 4096);
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
  assert.equal((await (await fetch(`${server.url}/version`)).json()).version, '0.1.0');
});

test('chat completion: message, reasoning split, usage', async () => {
  const r = await client.chat.completions.create({ model: 'demo', messages: user('What did the President say?'), max_tokens: 20, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, 'demo');
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.message.role, 'assistant');
  // The MiniMax template opens <think>: output until </think> is reasoning.
  assert.ok(typeof c.message.reasoning_content === 'string' && c.message.reasoning_content.length > 0);
  assert.ok(!(c.message.content ?? '').includes('<think>') && !(c.message.reasoning_content).includes('</think>'));
  assert.ok(['stop', 'length'].includes(c.finish_reason));
  assert.ok(r.usage.prompt_tokens > 10);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 20);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('chat streaming reassembles to the same message as non-streaming', async () => {
  const body = { model: 'demo', messages: user('Tell me about the Congress.'), max_tokens: 24, temperature: 0 };
  const whole = await client.chat.completions.create(body);
  const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let content = '', reasoning = '', finish = null, usage = null, chunks = 0, role = null;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta.role) role = ch.delta.role;
      content += ch.delta.content ?? '';
      reasoning += ch.delta.reasoning_content ?? '';
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  assert.equal(role, 'assistant');
  assert.ok(chunks > 3, 'tokens arrive as separate chunks');
  assert.equal(reasoning, whole.choices[0].message.reasoning_content ?? '');
  assert.equal(content, whole.choices[0].message.content ?? '');
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.deepEqual({ ...usage, prompt_tokens_details: undefined }, { ...whole.usage, prompt_tokens_details: undefined });
});

test('completions: text, streaming, echo, several prompts, token-id prompts', async () => {
  const r = await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 12, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.match(r.choices[0].text, /^ the President/);
  assert.equal(r.usage.prompt_tokens, 4);
  assert.equal(r.usage.completion_tokens, 12);
  assert.equal(r.choices[0].finish_reason, 'length');
  let text = '';
  for await (const chunk of await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 12, temperature: 0, stream: true }))
    text += chunk.choices[0]?.text ?? '';
  assert.equal(text, r.choices[0].text);
  const echo = await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 3, temperature: 0, echo: true });
  assert.ok(echo.choices[0].text.startsWith('The President said that the President'));
  const multi = await client.completions.create({ model: 'demo', prompt: ['The President said that', 'Call me'], max_tokens: 4, temperature: 0, n: 2 });
  assert.equal(multi.choices.length, 4);
  assert.deepEqual(multi.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.equal(multi.choices[0].text, multi.choices[1].text, 'greedy: both choices agree');
  assert.equal(multi.choices[0].text, r.choices[0].text.slice(0, multi.choices[0].text.length));
  const ids = await client.completions.create({ model: 'demo', prompt: [2693, 1456, 1847, 338], max_tokens: 12, temperature: 0 });
  assert.equal(ids.choices[0].text, r.choices[0].text);
});

test('seeds reproduce; n > 1 gives different seeded choices', async () => {
  const body = { model: 'demo', prompt: 'Call me Ishmael.', max_tokens: 24, temperature: 1.0, seed: 1234, ignore_eos: true };
  const a = await client.completions.create(body);
  const b = await client.completions.create(body);
  assert.equal(a.choices[0].text, b.choices[0].text);
  const c = await client.completions.create({ ...body, seed: 99 });
  assert.notEqual(a.choices[0].text, c.choices[0].text);
  const n = await client.completions.create({ ...body, n: 3 });
  assert.equal(n.choices.length, 3);
  assert.equal(n.choices[0].text, a.choices[0].text, 'choice 0 uses the seed itself');
  assert.equal(new Set(n.choices.map((x) => x.text)).size, 3);
  assert.equal(n.usage.completion_tokens, 72);
});

test('stop strings end the text before them, across token boundaries', async () => {
  const full = (await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 30, temperature: 0 })).choices[0].text;
  const stop = full.slice(12, 17);  // five characters from the middle: usually spans tokens
  const at = full.indexOf(stop);
  const r = await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 30, temperature: 0, stop: ['zzz', stop] });
  assert.equal(r.choices[0].text, full.slice(0, at));
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].stop_reason, stop);
  let streamed = '';
  for await (const chunk of await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 30, temperature: 0, stop, stream: true }))
    streamed += chunk.choices[0]?.text ?? '';
  assert.equal(streamed, full.slice(0, at), 'held-back text is never released past the stop string');
  const chat = await client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 30, temperature: 0, stop: ['the'] });
  assert.ok(!(chat.choices[0].message.content ?? '').includes('the') && !(chat.choices[0].message.reasoning_content ?? '').includes('the'));
});

test('logprobs: chat top_logprobs and completions logprobs', async () => {
  const r = await client.chat.completions.create({ model: 'demo', messages: user('Hello'), max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, r.usage.completion_tokens);
  for (const e of lp) {
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 3);
    assert.equal(e.top_logprobs[0].token, e.token, 'greedy: the chosen token is the most likely');
    assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6);
    assert.ok(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob && e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob);
    assert.deepEqual(e.bytes, [...Buffer.from(e.token, 'utf8')]);
  }
  const c = await client.completions.create({ model: 'demo', prompt: 'The President said that', max_tokens: 5, temperature: 0, logprobs: 2 });
  const l = c.choices[0].logprobs;
  assert.equal(l.tokens.length, 5);
  assert.equal(l.tokens.join(''), c.choices[0].text);
  assert.deepEqual(l.text_offset, l.tokens.map((_, i) => l.tokens.slice(0, i).join('').length));
  assert.equal(Object.keys(l.top_logprobs[0]).length, 2);
  const without = await client.chat.completions.create({ model: 'demo', messages: user('Hello'), max_tokens: 2 });
  assert.equal(without.choices[0].logprobs, null);
});

test('tokenize and detokenize', async () => {
  const t = await (await fetch(`${server.url}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt: 'The President said that', add_special_tokens: false }) })).json();
  assert.deepEqual(t.tokens, [2693, 1456, 1847, 338]);
  assert.equal(t.count, 4);
  assert.equal(t.max_model_len, 4096);
  const d = await (await fetch(`${server.url}/detokenize`, { method: 'POST', body: JSON.stringify({ tokens: t.tokens }) })).json();
  assert.equal(d.prompt, 'The President said that');
  const chat = await (await fetch(`${server.url}/tokenize`, { method: 'POST', body: JSON.stringify({ messages: user('hi') }) })).json();
  const r = await client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 1 });
  assert.equal(chat.count, r.usage.prompt_tokens, 'the chat prompt the template renders is the one that runs');
});

test('/metrics in Prometheus text with vLLM-like names', async () => {
  const before = await server.metrics();
  await client.completions.create({ model: 'demo', prompt: 'Moby Dick', max_tokens: 7, temperature: 0 });
  const m = await server.metrics();
  for (const name of ['m2:num_requests_running', 'm2:num_requests_waiting', 'm2:prompt_tokens_total', 'm2:generation_tokens_total',
    'm2:kv_cache_usage_perc', 'm2:kv_cache_blocks_used', 'm2:kv_cache_blocks_free', 'm2:prefix_cache_hit_rate',
    'm2:time_to_first_token_seconds_count', 'm2:inter_token_latency_seconds_count', 'm2:e2e_request_latency_seconds_count',
    'm2:spec_decode_num_draft_tokens_total', 'm2:num_preemptions_total'])
    assert.ok(name in m, `${name} is exported`);
  assert.equal(m['m2:generation_tokens_total'] - before['m2:generation_tokens_total'], 7);
  assert.equal(m['m2:e2e_request_latency_seconds_count'] - before['m2:e2e_request_latency_seconds_count'], 1);
  assert.equal(m['m2:inter_token_latency_seconds_count'] - before['m2:inter_token_latency_seconds_count'], 6);
  assert.equal(m['m2:num_requests_running'], 0);
  assert.equal(m['m2:kv_cache_blocks_used'], 0);
  assert.ok(/request .* prompt \d+ tokens .* generated 7, ttft [\d.]+ ms, [\d.]+ tok\/s, finish length/.test(server.stderr), 'one log line per request');
});
