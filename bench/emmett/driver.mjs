// Side-by-side driver: Emmett 0.42 (@event-driven-io/emmett-postgresql) and eventstore (through
// pg, calling its SQL functions), the same pg.Pool size and number of concurrent workers.
//
//   node driver.mjs versions
//   node driver.mjs OP SYSTEM CONNECTION_STRING SECONDS WORKERS
//     OP:     seed | single | batch | readstream | readall
//     SYSTEM: emmett | eventstore | eventstore-unnamed
// eventstore gives each of its statements a name, so that pg prepares it once per connection (as
// node-postgres documents for a query run over and over); eventstore-unnamed sends them unnamed,
// parsed and planned on every call, which is how Emmett's own driver (dumbo) sends its statements.
// Prints one JSON line: {ops, events, seconds, ops_per_s, events_per_s, client_cpu_s}.
import { readFileSync } from 'node:fs';
import pg from 'pg';

const PAYLOAD = { account_id: 'ACC-000123', amount: 125.5, currency: 'EUR', reference: 'INV-2024-000987', channel: 'web' };
const STREAMS = 1000;
const BATCH = 100;
const PAGE = 1000;
const feed = {}; // per worker: where its pass through the global feed is

const [op, system, url, secondsArg, workersArg] = process.argv.slice(2);
if (op === 'versions') {
  const v = (p) => JSON.parse(readFileSync(new URL(`node_modules/${p}/package.json`, import.meta.url))).version;
  console.log(JSON.stringify({ node: process.version, 'emmett-postgresql': v('@event-driven-io/emmett-postgresql'), pg: v('pg') }));
  process.exit(0);
}
const seconds = Number(secondsArg ?? 9);
const workers = Number(workersArg ?? 8);
const pool = new pg.Pool({ connectionString: url, max: workers, options: '-c synchronous_commit=off' });
// each worker appends to its own streams (those n with n % workers = its number), so that no two
// workers write one stream at once: Emmett rejects such a race (expected version conflict),
// eventstore makes one wait for the other; neither is what is measured here
const sid = (k) => 1 + k + workers * Math.floor(Math.random() * Math.floor(STREAMS / workers));

async function emmett() {
  const { getPostgreSQLEventStore, readMessagesBatch } = await import('@event-driven-io/emmett-postgresql');
  const { dumbo } = await import('@event-driven-io/dumbo');
  const store = getPostgreSQLEventStore(url, { connectionOptions: { pool } });
  const executor = dumbo({ connectionString: url, pool });
  const events = (n) => Array.from({ length: n }, () => ({ type: 'Deposited', data: PAYLOAD }));
  return {
    async seed() {
      await store.schema.migrate();
      for (let s = 1; s <= STREAMS; s += workers) {
        await Promise.all(Array.from({ length: Math.min(workers, STREAMS - s + 1) }, (_, k) => store.appendToStream(`account-${s + k}`, events(20))));
      }
      await store.appendToStream('big-1', events(1000));
    },
    single: async (k) => { await store.appendToStream(`account-${sid(k)}`, events(1)); return 1; },
    batch: async (k) => { await store.appendToStream(`account-${sid(k)}`, events(BATCH)); return BATCH; },
    readstream: async () => (await store.readStream('big-1')).events.length,
    // one page per call; each worker goes through the whole feed, then starts again
    readall: async (k) => {
      const after = feed[k] ?? null;
      const r = await readMessagesBatch(executor.execute, after === null ? { from: 0n, batchSize: PAGE } : { after, batchSize: PAGE });
      feed[k] = r.messages.length < PAGE ? null : r.currentGlobalPosition;
      return r.messages.length;
    },
    close: async () => { await store.close().catch(() => {}); },
  };
}

async function eventstore(named) {
  const query = (name, text, values) => pool.query(named ? { name, text, values } : { text, values });
  const events = (n) => JSON.stringify(Array.from({ length: n }, () => ({ event_type: 'Deposited', payload: PAYLOAD })));
  const one = JSON.stringify(PAYLOAD);
  const batch = events(BATCH);
  return {
    async seed() {
      await pool.query('SELECT count(*) FROM eventstore.append_events($1, $2, $3::jsonb)', ['big', '1', events(1000)]);
    },
    single: async (k) => {
      await query('es_single', "SELECT * FROM eventstore.append_event('account', $1, 'Deposited', $2::jsonb, '{}')", [String(sid(k)), one]);
      return 1;
    },
    batch: async (k) => {
      await query('es_batch', "SELECT * FROM eventstore.append_events('account', $1, $2::jsonb)", [String(sid(k)), batch]);
      return BATCH;
    },
    readstream: async () => (await query('es_readstream', "SELECT * FROM eventstore.read_stream('big', '1', max_count => 1000)", [])).rows.length,
    readall: async (k) => {
      const { rows } = await query('es_readall', 'SELECT * FROM eventstore.read_all(after => $1, max_count => $2)', [feed[k] ?? null, PAGE]);
      feed[k] = rows.length < PAGE ? null : rows[rows.length - 1].cursor;
      return rows.length;
    },
    close: async () => {},
  };
}

const impl = system === 'emmett' ? await emmett()
  : system === 'eventstore' ? await eventstore(true)
  : system === 'eventstore-unnamed' ? await eventstore(false)
  : (() => { throw new Error(`unknown system ${system}`); })();
if (op === 'seed') {
  await impl.seed();
  console.log(JSON.stringify({ ops: 0, events: 0, seconds: 0, ops_per_s: 0, events_per_s: 0, client_cpu_s: 0 }));
} else {
  const fn = impl[op];
  if (!fn) throw new Error(`unknown op ${op}`);
  await Promise.all(Array.from({ length: workers }, (_, k) => fn(k))); // warm the pool and plans
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  let ops = 0, n = 0;
  await Promise.all(Array.from({ length: workers }, async (_, k) => {
    while (process.hrtime.bigint() < end) { const got = await fn(k); n += got; ops += 1; }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  console.log(JSON.stringify({ ops, events: n, seconds: secs, ops_per_s: ops / secs, events_per_s: n / secs, client_cpu_s: (cpu.user + cpu.system) / 1e6 }));
}
await impl.close();
await pool.end().catch(() => {});
