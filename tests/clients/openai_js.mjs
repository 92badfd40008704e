// The official OpenAI JavaScript library against the gateway, as an application uses it.
// Env: SOLLOL_URL (the gateway), SOLLOL_KEY, MODEL, EMBED_MODEL. Prints one JSON object with what
// each call returned (the pytest side checks it and what the gateway recorded); exits 1 on the
// first failed step, naming it.
import assert from "node:assert/strict";
const { default: OpenAI } = await import(process.env.OPENAI_PACKAGE ?? "openai");

const client = new OpenAI({
  baseURL: process.env.SOLLOL_URL + "/v1", apiKey: process.env.SOLLOL_KEY, maxRetries: 0,
  timeout: 120_000,
});
const model = process.env.MODEL;
const ask = [{ role: "user", content: "Say hello" }];
const out = { version: OpenAI.VERSION ?? null };

async function step(name, fn) {
  try {
    out[name] = await fn();
  } catch (err) {
    console.log(JSON.stringify({ ...out, failed: name, error: String(err?.stack ?? err) }));
    process.exit(1);
  }
}

await step("list", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model), `models: ${ids}`);
  return ids;
});
await step("chat", async () => {
  const r = await client.chat.completions.create({ model, messages: ask, max_tokens: 8 });
  assert.equal(r.choices[0].message.role, "assistant");
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 8);
  return { finish: r.choices[0].finish_reason, tokens: r.usage.completion_tokens };
});
await step("chat_stream", async () => {
  const stream = await client.chat.completions.create({
    model, messages: ask, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  let text = "", finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? "";
      finish = c.finish_reason ?? finish;
    }
  }
  assert.ok(chunks > 1 && finish && usage?.completion_tokens > 0);
  return { chunks, finish, tokens: usage.completion_tokens };
});
await step("chat_stream_helper", async () => {
  const completions = client.chat.completions.stream ? client.chat.completions
    : client.beta.chat.completions;  // (openai 4.x has the helper under beta)
  const runner = completions.stream({ model, messages: ask, max_tokens: 8 });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.role, "assistant");
  return { finish: final.choices[0].finish_reason };
});
await step("completion", async () => {
  const r = await client.completions.create({ model, prompt: "Once upon", max_tokens: 6 });
  assert.equal(typeof r.choices[0].text, "string");
  return { finish: r.choices[0].finish_reason };
});
await step("embeddings", async () => {
  const r = await client.embeddings.create({
    model: process.env.EMBED_MODEL, input: ["hello", "world"],
  });
  assert.equal(r.data.length, 2);
  assert.ok(r.data[0].embedding.length > 0 && r.data[0].embedding.every(Number.isFinite));
  return { count: r.data.length, dims: r.data[0].embedding.length };
});
await step("responses", async () => {
  const r = await client.responses.create({ model, input: "Say hello", max_output_tokens: 8 });
  assert.equal(r.object, "response");
  assert.equal(typeof r.output_text, "string");
  return { status: r.status, items: r.output.length };
});
await step("responses_stream_final", async () => {
  const stream = client.responses.stream({ model, input: "Say hello", max_output_tokens: 8 });
  const kinds = [];
  stream.on("event", (e) => kinds.push(e.type));
  const final = await stream.finalResponse();
  assert.ok(Array.isArray(final.output) && final.output.length > 0, JSON.stringify(final));
  const text = final.output.flatMap((item) => item.content ?? []).map((c) => c.text).join("");
  assert.equal(typeof text, "string");  // (output_text: only the newest versions add it here)
  assert.equal(kinds[0], "response.created");
  assert.ok(["response.completed", "response.incomplete"].includes(kinds.at(-1)));
  return { status: final.status, kinds: [...new Set(kinds)], text };
});
await step("responses_raw_stream", async () => {
  const stream = await client.responses.create({
    model, input: "Say hello", max_output_tokens: 8, stream: true,
  });
  const kinds = [];
  for await (const e of stream) kinds.push(e.type);
  assert.equal(kinds[0], "response.created");
  return { kinds };
});
// Aborting: the library's stream iterator ends quietly (or throws its abort error); either
// way the answer must stop before its end (3000 tokens: the node ignores end-of-text; older
// versions still hand out what had arrived before the abort).
function isAbort(err) {
  return err instanceof OpenAI.APIUserAbortError || err?.name === "AbortError";
}
await step("chat_abort", async () => {
  const ctrl = new AbortController();
  const stream = await client.chat.completions.create(
    { model, messages: ask, max_tokens: 3000, ignore_eos: true, stream: true },
    { signal: ctrl.signal });
  let chunks = 0, finish = null, threw = false;
  try {
    for await (const chunk of stream) {
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (++chunks === 2) ctrl.abort();
    }
  } catch (err) {
    assert.ok(isAbort(err), String(err));
    threw = true;
  }
  assert.ok(chunks < 3000 && finish === null, `${chunks} chunks after the abort, ${finish}`);
  return { chunks, threw };
});
await step("responses_abort", async () => {
  const stream = client.responses.stream({
    model, input: "Say hello", max_output_tokens: 3000, ignore_eos: true,
  });
  let deltas = 0, last = null, threw = false;
  try {
    for await (const e of stream) {
      last = e.type;
      if (e.type === "response.output_text.delta" && ++deltas === 2) stream.abort();
    }
  } catch (err) {
    assert.ok(isAbort(err), String(err));
    threw = true;
  }
  assert.ok(deltas < 3000 && last !== "response.completed", `${deltas} deltas, ended ${last}`);
  return { deltas, threw };
});
await step("unknown_model", async () => {
  try {
    await client.chat.completions.create({ model: "no-such-model", messages: ask });
  } catch (err) {
    assert.ok(err instanceof OpenAI.NotFoundError, String(err));
    return { status: err.status, message: err.message };
  }
  assert.fail("an unknown model was accepted");
});
console.log(JSON.stringify(out));
