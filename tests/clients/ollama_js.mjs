// The official Ollama JavaScript library against the gateway, as an application uses it.
// Env: SOLLOL_URL (the gateway), SOLLOL_KEY, MODEL, EMBED_MODEL. Prints one JSON object with what
// each call returned; exits 1 on the first failed step, naming it.
import assert from "node:assert/strict";
import { Ollama } from "ollama";

const client = new Ollama({
  host: process.env.SOLLOL_URL,
  headers: { Authorization: "Bearer " + process.env.SOLLOL_KEY },
});
const model = process.env.MODEL;
const messages = [{ role: "user", content: "Say hello" }];
const options = { num_predict: 8, temperature: 0 };
const out = {};

async function step(name, fn) {
  try {
    out[name] = await fn();
  } catch (err) {
    console.log(JSON.stringify({ ...out, failed: name, error: String(err?.stack ?? err) }));
    process.exit(1);
  }
}

await step("version", async () => {
  const v = await client.version();
  assert.equal(typeof v.version, "string");
  return v.version;
});
await step("list", async () => {
  const r = await client.list();
  const names = r.models.map((m) => m.name);
  assert.ok(names.some((n) => n === model || n === model + ":latest"), `models: ${names}`);
  return names;
});
await step("show", async () => {
  const r = await client.show({ model });
  assert.ok(r.details && typeof r.details.family === "string");
  return { family: r.details.family, capabilities: r.capabilities ?? null };
});
await step("ps", async () => (await client.ps()).models.map((m) => m.name));
await step("chat", async () => {
  const r = await client.chat({ model, messages, options });
  assert.equal(r.message.role, "assistant");
  assert.ok(r.done && r.eval_count > 0 && r.eval_count <= 8);
  return { done_reason: r.done_reason, eval_count: r.eval_count };
});
await step("chat_stream", async () => {
  const stream = await client.chat({ model, messages, options, stream: true });
  const parts = [];
  for await (const part of stream) parts.push(part);
  assert.ok(parts.length > 1 && parts.at(-1).done && parts.at(-1).eval_count > 0);
  return { parts: parts.length, eval_count: parts.at(-1).eval_count };
});
await step("generate", async () => {
  const r = await client.generate({ model, prompt: "Once upon", options });
  assert.ok(r.done && typeof r.response === "string" && r.eval_count > 0);
  return { done_reason: r.done_reason, eval_count: r.eval_count };
});
await step("generate_stream", async () => {
  const stream = await client.generate({ model, prompt: "Once upon", options, stream: true });
  const parts = [];
  for await (const part of stream) parts.push(part);
  assert.ok(parts.length > 1 && parts.at(-1).done);
  return { parts: parts.length };
});
await step("embed", async () => {
  const r = await client.embed({ model: process.env.EMBED_MODEL, input: ["hello", "world"] });
  assert.equal(r.embeddings.length, 2);
  assert.ok(r.embeddings[0].length > 0 && r.embeddings[0].every(Number.isFinite));
  return { count: r.embeddings.length, dims: r.embeddings[0].length };
});
await step("embeddings_legacy", async () => {
  const r = await client.embeddings({ model: process.env.EMBED_MODEL, prompt: "hello" });
  assert.ok(r.embedding.length > 0);
  return { dims: r.embedding.length };
});
await step("chat_abort", async () => {
  // a long answer, cut by the client after two parts
  const stream = await client.chat({
    model, messages, stream: true, options: { num_predict: 3000, temperature: 0 },
  });
  let parts = 0;
  try {
    for await (const part of stream) {
      if (++parts === 2) stream.abort();
      if (part.done) break;
    }
    assert.fail(`the stream went on after the abort (${parts} parts)`);
  } catch (err) {
    assert.equal(err.name, "AbortError", String(err));
  }
  return { parts };
});
await step("unknown_model", async () => {
  try {
    await client.chat({ model: "no-such-model", messages });
  } catch (err) {
    assert.equal(err.name, "ResponseError", String(err));
    assert.equal(err.status_code, 404);
    return { status: err.status_code, message: err.error };
  }
  assert.fail("an unknown model was accepted");
});
console.log(JSON.stringify(out));
