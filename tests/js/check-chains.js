// Checks commit chains exported by vizhub-migrate with the real ot-json1 / ot-text-unicode
// packages that V3 runs. Input (argv[2]): {cases: [{name, chain: [op, ...], content}]} where
// `chain` is the ops of every commit from the root (`{}`) to the viz's end commit, across forks.
// For each op: ot-json1 normalize leaves it unchanged, apply succeeds; the replayed document
// deep-equals `content`. Prints a JSON report; exits 1 on any failure.
'use strict';
const fs = require('fs');
const assert = require('assert');
const { type } = require('ot-json1');

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const failures = [];
let ops = 0;
for (const c of input.cases) {
  let doc = {};
  try {
    c.chain.forEach((op, i) => {
      const normalized = type.normalize(JSON.parse(JSON.stringify(op)));
      try {
        assert.deepStrictEqual(normalized, op);
      } catch (e) {
        throw new Error(`op #${i} is not normalized: ${JSON.stringify(op)} -> ${JSON.stringify(normalized)}`);
      }
      try {
        doc = type.apply(doc, op);
      } catch (e) {
        throw new Error(`op #${i} does not apply: ${e.message}: ${JSON.stringify(op).slice(0, 300)}`);
      }
      ops++;
    });
    assert.deepStrictEqual(doc, c.content, 'replayed chain != content');
    for (const [i, extra] of (c.extraEdits || []).entries()) {
      // An edit a user would make in V3 right after migration must apply too.
      const after = type.apply(doc, extra.op);
      assert.deepStrictEqual(after, extra.result, `extra edit #${i} result`);
    }
  } catch (e) {
    failures.push({ name: c.name, error: e.message });
  }
}
const report = { cases: input.cases.length, ops, failures };
console.log(JSON.stringify(report));
process.exit(failures.length ? 1 : 0);
