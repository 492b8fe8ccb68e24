'use strict';
// node-postgres (npm `pg`) against a cluster running traffic_control with the
// budgets of regress/test.conf:
//   client_shed: enforce, max_concurrent 0, rule matches /*test='client_shed'*/
//   client_warn: warn,    max_concurrent 0, rule matches /*test='client_warn'*/
// Each case runs over the simple protocol (a plain text query), the extended
// protocol with an unnamed statement (a query with `values`) and the extended
// protocol with a named prepared statement (a query with `name`).
// Connection: the standard PG* environment variables (test/run_all.sh exports
// them for its cluster); PGDATABASE defaults to `postgres`.
//
// Run: npm ci && node --test

const test = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('pg');

const PREFIX = '[PGINSIGHTS] Traffic Control:';
const SHED = "/*test='client_shed'*/";
const WARN = "/*test='client_warn'*/";

async function connect() {
  const client = new Client({ database: process.env.PGDATABASE || 'postgres' });
  const notices = [];
  client.on('notice', (msg) => notices.push(msg));
  await client.connect();
  return { client, notices };
}

// The three ways node-postgres sends a statement. `label` is selected back so
// the result can be checked; `n` travels as a bind parameter where there is one.
const PROTOCOLS = {
  simple: (label, tag) => ({ text: `SELECT '${label}'::text AS label, 7 AS n ${tag}` }),
  extended: (label, tag) => ({
    text: `SELECT '${label}'::text AS label, $1::int AS n ${tag}`,
    values: [7],
  }),
  prepared: (label, tag) => ({
    name: `tc_${label}`,
    text: `SELECT '${label}'::text AS label, $1::int AS n ${tag}`,
    values: [7],
  }),
};

// Executions per case: a named prepared statement is executed often enough that
// PostgreSQL's plan cache switches to a generic plan (after 5 custom plans), so
// admission is checked on cached plans too.
const RUNS = { simple: 1, extended: 2, prepared: 7 };

function assertRefusal(err, budget) {
  assert.ok(err instanceof Error, `expected an Error, got ${err}`);
  assert.equal(err.code, '53000', `SQLSTATE of: ${err.message}`);
  assert.equal(err.severity, 'ERROR');
  assert.ok(err.message.startsWith(PREFIX), `message starts with the prefix: ${err.message}`);
  assert.equal(err.message, `${PREFIX} query blocked by budget "${budget}": max_concurrent exceeded`);
  assert.equal(typeof err.detail, 'string', 'DETAIL is present');
  assert.match(err.detail, /Rule "client_shed"/);
  assert.match(err.detail, /mode enforce/);
}

// The protocols really are what their names say: the simple protocol accepts
// several statements in one string, the extended protocol refuses them.
test('protocol check: simple accepts two statements, extended refuses them', async () => {
  const { client } = await connect();
  try {
    const multi = await client.query('SELECT 1 AS a; SELECT 2 AS b');
    assert.equal(multi.length, 2, 'two results over the simple protocol');
    await assert.rejects(
      client.query({ text: 'SELECT $1::int AS a; SELECT 2 AS b', values: [1] }),
      (err) => err.code === '42601' && /multiple commands/.test(err.message),
    );
    await assert.rejects(
      client.query({ name: 'tc_multi', text: 'SELECT $1::int AS a; SELECT 2 AS b', values: [1] }),
      (err) => err.code === '42601',
    );
    const prepared = await client.query({ name: 'tc_probe', text: 'SELECT $1::int AS a', values: [1] });
    assert.equal(prepared.rows[0].a, 1);
    const ps = await client.query(
      "SELECT from_sql FROM pg_prepared_statements WHERE name = 'tc_probe'");
    assert.deepEqual(ps.rows, [{ from_sql: false }], 'a protocol-level named statement exists');
  } finally {
    await client.end();
  }
});

for (const [protocol, build] of Object.entries(PROTOCOLS)) {
  test(`${protocol} protocol: a warn budget sends a NOTICE and the result arrives`, async () => {
    const { client, notices } = await connect();
    try {
      for (let i = 0; i < RUNS[protocol]; i++) {
        notices.length = 0;
        const res = await client.query(build(`warn_${protocol}`, WARN));
        assert.deepEqual(res.rows, [{ label: `warn_${protocol}`, n: 7 }], `run ${i + 1}`);
        assert.equal(notices.length, 1, `one NOTICE on run ${i + 1}`);
        const [notice] = notices;
        assert.equal(notice.severity, 'NOTICE');
        assert.equal(notice.code, '53000');
        assert.ok(notice.message.startsWith(PREFIX), `notice starts with the prefix: ${notice.message}`);
        assert.equal(notice.message,
          `${PREFIX} query would be blocked by budget "client_warn": max_concurrent exceeded`);
        assert.match(notice.detail, /Rule "client_warn"/);
      }
      // A statement without the tag matches no budget: no NOTICE.
      notices.length = 0;
      await client.query(build(`quiet_${protocol}`, ''));
      assert.equal(notices.length, 0, 'no NOTICE for an untagged statement');
    } finally {
      await client.end();
    }
  });

  test(`${protocol} protocol: a refused statement raises 53000 and the connection stays usable`, async () => {
    const { client } = await connect();
    try {
      for (let i = 0; i < RUNS[protocol]; i++) {
        await assert.rejects(client.query(build(`shed_${protocol}`, SHED)), (err) => {
          assertRefusal(err, 'client_shed');
          return true;
        }, `run ${i + 1} is refused`);
        const after = await client.query(build(`after_${protocol}`, ''));
        assert.deepEqual(after.rows, [{ label: `after_${protocol}`, n: 7 }], `usable after run ${i + 1}`);
      }
    } finally {
      await client.end();
    }
  });

  test(`${protocol} protocol: a refusal inside a transaction, then ROLLBACK`, async () => {
    const { client } = await connect();
    try {
      await client.query('BEGIN');
      await assert.rejects(client.query(build(`tx_${protocol}`, SHED)), (err) => {
        assertRefusal(err, 'client_shed');
        return true;
      });
      await assert.rejects(client.query('SELECT 1'), (err) => err.code === '25P02',
        'the transaction is aborted until ROLLBACK');
      await client.query('ROLLBACK');
      const after = await client.query(build(`tx_after_${protocol}`, ''));
      assert.deepEqual(after.rows, [{ label: `tx_after_${protocol}`, n: 7 }]);
    } finally {
      await client.end();
    }
  });
}
