// Browser tests of Engram's web UI: playwright-core drives Debian's chromium (headless) against a running engram
// server that holds the demo corpus. tests/web_ui.rs starts that server and runs this file; by hand:
//
//   node tests/ui/ui.test.mjs http://127.0.0.1:8080 target/ui-screenshots
//
// Exits non-zero when any check fails (or chromium cannot start); saves a screenshot per step, and one named
// FAILED-*.png for each failing check. CHROMIUM overrides the browser path (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error('usage: node ui.test.mjs BASE_URL SCREENSHOT_DIR');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const origin = new URL(base).origin;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const QUESTION = 'Which company did Ida Fernsworth found in 1874?';
const WAIT = { timeout: 30_000 };

async function api(method, path, body) {
  const res = await fetch(origin + path, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

const started = Date.now();
const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
console.log(`chromium ${browser.version()} at ${executablePath}, engram at ${origin}`);
let failures = 0;

// Runs one check in a fresh page; fails it on any uncaught page error or any request leaving the server's origin.
async function check(name, fn) {
  const t = Date.now();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol.startsWith('http') && u.origin !== origin) problems.push(`external request: ${r.url()}`);
  });
  try {
    await fn(page);
    assert.deepEqual(problems, [], 'the page stayed offline and threw no errors');
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name} (${Date.now() - t} ms)\n${e.stack || e}`);
    if (problems.length) console.log(problems.join('\n'));
    const file = join(shots, `FAILED-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => {});
    console.log(`     screenshot: ${file}`);
  } finally {
    await context.close();
  }
}

async function open(page, hash = '') {
  await page.goto(`${origin}/${hash}`);
  await page.waitForSelector('#ready[data-state="ready"]', WAIT);
}

// Every form control has an accessible name.
async function assertLabelled(page) {
  const unlabelled = await page.$$eval('input:not([type=hidden]), select, textarea', (els) =>
    els.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id || e.outerHTML));
  assert.deepEqual(unlabelled, [], 'every control has a label');
}

const num = (s) => Number(s.replace('−', '-'));

await check('ask: answer with citation, passages with attributions, seeds and graph', async (page) => {
  await open(page);
  await assertLabelled(page);
  assert.equal(await page.getAttribute('#answer', 'aria-live'), 'polite');
  // Keyboard only: type the question, pick the settings, Enter asks.
  await page.focus('#question');
  await page.keyboard.type(QUESTION);
  await page.selectOption('#ask-retriever', 'hipporag');
  await page.fill('#ask-top-k', '5');
  await page.selectOption('#ask-attribution', 'passages');
  await page.focus('#question');
  const isQa = (r) => r.url().endsWith('/v1/qa') && r.request().method() === 'POST';
  const streamed = page.waitForResponse(isQa, WAIT);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#answer-text', WAIT);
  // The page asks for the streamed answer (token events, then the attribution, then the response).
  const qa = await streamed;
  assert.equal(JSON.parse(qa.request().postData()).stream, true);
  assert.match(qa.headers()['content-type'], /^text\/event-stream/);
  assert.match(await qa.text(), /event: token[\s\S]*event: attribution[\s\S]*event: done/);
  await page.waitForFunction(() => document.querySelectorAll('#qa-passages > li').length > 0, null, WAIT);

  // What the page shows is what the API answers for the same question.
  const { status, body: want } = await api('POST', '/v1/qa',
    { question: QUESTION, top_k: 5, retriever: 'hipporag', attribution: 'passages' });
  assert.equal(status, 200);
  assert.equal(want.passages.length, 5);
  assert.match(want.answer.text, /Fernsworth/);
  const answer = await page.textContent('#answer-text');
  assert.ok(answer.startsWith(want.answer.text), `answer shown: ${answer}`);
  const cite = await page.textContent('#answer-text a.cite');
  assert.equal(cite, `[${want.answer.passage + 1}]`);

  const shown = await page.$$eval('#qa-passages > li', (lis) => lis.map((li) => ({
    title: li.querySelector('h4').textContent,
    attr: li.querySelector('.attr-value') && li.querySelector('.attr-value').textContent,
    bar: li.querySelector('.bar > span') && li.querySelector('.bar > span').style.width,
    w: Number(li.style.getPropertyValue('--w')),
    mark: li.querySelector('mark.answer-span') && li.querySelector('mark.answer-span').textContent,
  })));
  assert.equal(shown.length, 5);
  const max = Math.max(...want.passages.map((p) => Math.abs(p.attribution.value)));
  assert.ok(max > 0, 'some passage carries the answer');
  shown.forEach((s, i) => {
    const p = want.passages[i];
    assert.equal(s.title, p.title);
    const [v, se] = s.attr.split('±').map((x) => num(x.trim()));
    const tol = (x) => 0.006 * Math.max(1, Math.abs(x));
    assert.ok(Math.abs(v - p.attribution.value) <= tol(p.attribution.value), `passage ${i + 1}: ${s.attr} vs ${p.attribution.value}`);
    assert.ok(Math.abs(se - p.attribution.std_error) <= tol(p.attribution.std_error), `passage ${i + 1}: ${s.attr}`);
    const rel = Math.abs(p.attribution.value) / max;
    assert.ok(Math.abs(s.w - rel) < 0.002, `passage ${i + 1}: colour intensity ${s.w} vs ${rel}`);
    assert.ok(Math.abs(parseFloat(s.bar) - rel * 100) < 0.1, `passage ${i + 1}: bar ${s.bar} vs ${rel}`);
    assert.equal(s.mark, i === want.answer.passage ? want.answer.text : null, `passage ${i + 1}: answer highlight`);
  });

  // Seed phrases and the graph drawing come from the response.
  assert.ok(want.seeds.length > 0, 'hipporag linked the question to the graph');
  const seeds = await page.$$eval('#seeds li', (lis) => lis.map((li) => li.textContent));
  assert.equal(seeds.length, want.seeds.length);
  want.seeds.forEach((s, i) => assert.ok(seeds[i].startsWith(s.phrase), `seed ${seeds[i]} vs ${s.phrase}`));
  assert.ok(want.relations.length > 0, 'the passages have relations');
  const drawn = Math.min(16, want.relations.length);
  assert.equal(await page.locator('svg.graph .node.relation').count(), drawn);
  assert.equal(await page.locator('svg.graph path.edge').count(), 3 * drawn);
  if (want.relations.some((r) => r.seed)) assert.ok(await page.locator('svg.graph .node.seed').count() > 0);
  assert.equal(await page.locator('#relation-list li').count(), want.relations.length);
  await page.screenshot({ path: join(shots, 'ask.png'), fullPage: true });

  // The citation marker is a link: Enter on it moves focus to its passage.
  await page.focus('#answer-text a.cite');
  await page.keyboard.press('Enter');
  assert.equal(await page.evaluate(() => document.activeElement.id), `qa-passage-${want.answer.passage + 1}`);

  // Token level: the top passage's runs of words are marked, one mark per run, their values as the API gives them.
  const { body: tok } = await api('POST', '/v1/qa',
    { question: QUESTION, top_k: 5, retriever: 'hipporag', attribution: 'tokens' });
  const ta = tok.token_attribution;
  assert.ok(ta && ta.spans.length > 0, 'token attribution in the response');
  await page.selectOption('#ask-attribution', 'tokens');
  await page.click('#ask-btn');
  await page.waitForFunction(() => document.querySelectorAll('mark.tok-attr').length > 0, null, WAIT);
  const marks = await page.$$eval(`#qa-passage-${ta.passage + 1} mark.tok-attr`, (ms) => ms.map((m) => ({
    title: m.getAttribute('title'), t: Number(m.style.getPropertyValue('--t')) })));
  assert.equal(marks.length, ta.spans.length);
  assert.equal(await page.locator('mark.tok-attr').count(), ta.spans.length, 'only the top passage is marked');
  const tmax = Math.max(...ta.spans.map((x) => Math.abs(x.value)));
  marks.forEach((m, i) => {
    const [v] = m.title.split('±').map((x) => num(x.trim()));
    assert.ok(Math.abs(v - ta.spans[i].value) <= 0.006 * Math.max(1, Math.abs(ta.spans[i].value)), `run ${i}: ${m.title}`);
    assert.ok(Math.abs(m.t - Math.abs(ta.spans[i].value) / tmax) < 0.002, `run ${i}: intensity ${m.t}`);
  });
  await page.screenshot({ path: join(shots, 'ask-tokens.png'), fullPage: true });

  // Sentence level: every attributed sentence is marked in its passage, scaled by the largest over all passages,
  // and the meta line names the method.
  const { body: sen } = await api('POST', '/v1/qa',
    { question: QUESTION, top_k: 5, retriever: 'hipporag', attribution: 'sentences' });
  const sa = sen.sentence_attribution;
  assert.ok(sa && sa.sentences.length > 5, 'sentence attribution in the response');
  await page.selectOption('#ask-attribution', 'sentences');
  await page.click('#ask-btn');
  await page.waitForFunction(() => document.querySelectorAll('mark.sent-attr').length > 0, null, WAIT);
  assert.equal(await page.locator('mark.sent-attr').count(), sa.sentences.length);
  const smax = Math.max(...sa.sentences.map((x) => Math.abs(x.value)));
  for (let p = 0; p < 5; p++) {
    const want = sa.sentences.filter((x) => x.passage === p);
    const got = await page.$$eval(`#qa-passage-${p + 1} mark.sent-attr`, (ms) => ms.map((m) => ({
      title: m.getAttribute('title'), t: Number(m.style.getPropertyValue('--t')) })));
    assert.equal(got.length, want.length, `passage ${p + 1}`);
    got.forEach((m, i) => {
      const [v] = m.title.split('±').map((x) => num(x.trim()));
      assert.ok(Math.abs(v - want[i].value) <= 0.006 * Math.max(1, Math.abs(want[i].value)), `sentence ${i}: ${m.title}`);
      assert.ok(Math.abs(m.t - (smax > 0 ? Math.abs(want[i].value) / smax : 0)) < 0.002, `sentence ${i}: intensity ${m.t}`);
    });
  }
  assert.match(await page.textContent('#answer-meta'), new RegExp(sa.attribution.method.replace('_', ' ')));
  if (sa.attribution.method === 'contextcite') {
    assert.match(await page.textContent('#evidence-meta'), /ContextCite weights/);
    assert.equal(await page.locator('#qa-passages .attr .muted').count(), 0, 'ContextCite values are not marked exact');
  }
  await page.screenshot({ path: join(shots, 'ask-sentences.png'), fullPage: true });

  // Settings are per question: bm25 without attribution shows no bars and says why there are no seeds.
  await page.selectOption('#ask-retriever', 'bm25');
  await page.selectOption('#ask-attribution', 'none');
  await page.fill('#ask-top-k', '3');
  await page.click('#ask-btn');
  await page.waitForFunction(() => document.querySelectorAll('#qa-passages > li').length === 3, null, WAIT);
  assert.equal(await page.locator('#qa-passages .attr').count(), 0);
  assert.match(await page.textContent('#seeds'), /bm25 does not walk the graph/);
  assert.match(await page.textContent('#answer-meta'), /^bm25 · 3 passages · no attribution/);

  // Two retrieval rounds: the page lists the question and the reasoning step that was the second query, as the
  // API answers them.
  const { body: it } = await api('POST', '/v1/qa',
    { question: QUESTION, top_k: 3, retriever: 'bm25', attribution: 'none', iterations: 2 });
  await page.selectOption('#ask-iterations', '2');
  await page.click('#ask-btn');
  assert.equal(it.rounds.length, 2, JSON.stringify(it.rounds));
  await page.waitForFunction(() => document.querySelectorAll('#rounds li').length === 2, null, WAIT);
  const items = await page.$$eval('#rounds li', (lis) => lis.map((li) => li.textContent));
  assert.ok(items[1].includes(it.rounds[1].query), items[1]);
  assert.equal(await page.locator('#qa-passages > li').count(), it.passages.length);
  await page.selectOption('#ask-iterations', '1');
});

await check('documents: drop two files, follow the job, list, search, open and delete them', async (page) => {
  await open(page, '#documents');
  await page.waitForSelector('#doc-list table', WAIT);
  await assertLabelled(page);
  const tag = `Quillfeather${Date.now()}`;
  const files = [
    { name: 'alpha.md', type: 'text/markdown', text: `# ${tag} Alpha\n\nThe ${tag} lighthouse stands on Cape Morrow.\n` },
    { name: `${tag}-beta.txt`, type: 'text/plain', text: `The ${tag} ferry sails from Saltcairn every morning.\n` },
  ];
  // Drag and drop both at once, as a user dropping files from a file manager.
  await page.evaluate((files) => {
    const dt = new DataTransfer();
    for (const f of files) dt.items.add(new File([f.text], f.name, { type: f.type }));
    const zone = document.getElementById('drop-zone');
    for (const type of ['dragenter', 'dragover', 'drop']) {
      zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
    }
  }, files);
  assert.equal(await page.locator('#file-list li').count(), 2);
  await page.click('#upload-btn');
  await page.waitForSelector('#job-status:not([hidden])', WAIT);
  await page.waitForFunction(() => /^Completed: 2 of 2 documents processed \(2 new/.test(
    document.getElementById('job-text').textContent), null, WAIT);
  assert.equal(await page.getAttribute('#job-text', 'role'), 'status');
  // No generation model: the job says the rule-based extractor built the graph.
  assert.match(await page.textContent('#job-text'),
    /Graph: [1-9]\d* passages? extracted by the rule-based extractor \(no generation model\)\./);
  assert.deepEqual(await page.$eval('#job-progress', (p) => [p.value, p.max]), [2, 2]);

  // Listed; the title filter finds both.
  await page.fill('#doc-search', tag);
  await page.waitForFunction(() => document.querySelectorAll('#doc-list tbody tr').length === 2, null, WAIT);
  const titles = await page.$$eval('#doc-list tbody th', (ths) => ths.map((t) => t.firstChild.textContent).sort());
  assert.deepEqual(titles, [`${tag} Alpha`, `${tag}-beta`]);

  // Open one: its passages.
  await page.getByRole('button', { name: `Open ${tag} Alpha` }).click();
  await page.waitForSelector('#detail-title', WAIT);
  assert.equal(await page.textContent('#detail-title'), `${tag} Alpha`);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'detail-title');
  assert.match(await page.textContent('#doc-detail ol.passages'), new RegExp(`${tag} lighthouse stands on Cape Morrow`));
  await page.screenshot({ path: join(shots, 'documents.png'), fullPage: true });

  // Delete both (confirming the dialog); the list and the API agree they are gone.
  page.on('dialog', (d) => d.accept());
  for (const title of titles) {
    await page.getByRole('button', { name: `Delete ${title}` }).click();
    await page.waitForFunction((t) => ![...document.querySelectorAll('#doc-list tbody th')].some((th) => th.firstChild.textContent === t), title, WAIT);
  }
  await page.waitForFunction((tag) => document.getElementById('doc-list').textContent.includes(`No documents with “${tag}” in the title.`), tag, WAIT);
  assert.ok(await page.locator('#doc-detail').isHidden(), 'the open document closed when deleted');
  const { body } = await api('GET', `/v1/documents?q=${tag}`);
  assert.equal(body.total, 0);
  await page.screenshot({ path: join(shots, 'documents-deleted.png'), fullPage: true });
});

await check('errors: a 4xx message, an unreachable server, a rejected upload, a failed job', async (page) => {
  await open(page);
  // A 4xx: the server caps top_k lower than the page does (ENGRAM__RETRIEVAL__MAX_TOP_K=100 in tests/web_ui.rs);
  // the server's message and code are shown as they come.
  const { status, body: want } = await api('POST', '/v1/qa', { question: QUESTION, top_k: 150 });
  assert.equal(status, 400);
  await page.fill('#question', QUESTION);
  await page.click('#ask-btn');
  await page.waitForFunction(() => document.querySelectorAll('#qa-passages > li').length === 5, null, WAIT);
  await page.fill('#ask-top-k', '150');
  await page.click('#ask-btn');
  await page.waitForFunction(() => document.getElementById('error').textContent.length > 0, null, WAIT);
  assert.equal(await page.getAttribute('#error', 'role'), 'alert');
  assert.equal(await page.textContent('#error'), `Error: ${want.error.message} ${want.error.code}`);
  assert.match(await page.textContent('#answer'), /No answer: the request failed/);
  assert.equal(await page.locator('#qa-passages > li, svg.graph').count(), 0, 'the previous answer\'s evidence is cleared');
  await page.screenshot({ path: join(shots, 'error-4xx.png') });

  // The server does not answer (the connection is refused): said so, not a blank page.
  await page.route('**/v1/qa', (route) => route.abort('connectionrefused'));
  await page.fill('#ask-top-k', '5');
  await page.click('#ask-btn');
  await page.waitForFunction(() => /Server unreachable/.test(document.getElementById('error').textContent), null, WAIT);
  assert.match(await page.textContent('#error'), /Server unreachable: POST \/v1\/qa got no answer/);
  await page.screenshot({ path: join(shots, 'error-unreachable.png') });
  await page.unroute('**/v1/qa');

  // An upload the server rejects (not a PDF): its message, nothing stored.
  await page.click('nav a[href="#documents"]');
  await page.setInputFiles('#file-input', { name: 'broken.pdf', mimeType: 'application/pdf', buffer: Buffer.from('this is not a PDF') });
  await page.click('#upload-btn');
  await page.waitForFunction(() => /invalid_pdf/.test(document.getElementById('error').textContent), null, WAIT);
  assert.match(await page.textContent('#error'), /broken\.pdf/);
  await page.screenshot({ path: join(shots, 'error-upload.png') });

  // A job that fails. The real server has no way to make one fail on demand, so these two responses are
  // simulated by the test: the page must say the job failed and why.
  await page.route('**/v1/documents', (route) => route.request().method() === 'POST'
    ? route.fulfill({ status: 202, contentType: 'application/json', body: JSON.stringify({ job_id: 'simulated', status: 'queued', documents: 1 }) })
    : route.continue());
  await page.route('**/v1/jobs/simulated', (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({
    id: 'simulated', status: 'failed', error: 'the database went away (simulated)',
    counts: { total: 1, pending: 1, done: 0, duplicate: 0, failed: 0 }, errors: [] }) }));
  await page.fill('#paste-text', 'Some text.');
  await page.click('#paste-btn');
  await page.waitForFunction(() => /Ingestion job failed/.test(document.getElementById('error').textContent), null, WAIT);
  assert.match(await page.textContent('#error'), /Ingestion job failed: the database went away \(simulated\)/);
  assert.match(await page.textContent('#job-text'), /^Failed: 0 of 1 document processed\. Job error: the database went away/);
  await page.screenshot({ path: join(shots, 'error-job.png') });
});

await browser.close();
console.log(`${failures ? `FAILED: ${failures} of 3 checks failed` : 'passed: 3 of 3 checks'} in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${shots}`);
process.exit(failures ? 1 : 0);
