/*
 * Headstart's JavaScript client: no dependencies, for pages and the demo.
 *
 *   const hs = new Headstart({ apiKey: "<frontend key>", baseUrl: "https://headstart.example.com" });
 *   hs.identify("alice@example.com", userHashFromYourBackend);   // identity verification
 *   const decision = await hs.decide("alice@example.com", { device_type: "mobile" });
 *   hs.track("alice@example.com", "step_completed", { step: decision.step.id });
 *   await hs.loadRuleset();              // signed flags/targeting, for when Headstart is slow
 *   hs.flag("alice@example.com", "new_onboarding");
 *
 * Identity (docs/identity.md): with identity verification on, every request naming a user
 * carries its `user_hash`, hex(HMAC-SHA256(identity secret, user id)), which the product's
 * backend computes and the page passes to `identify(userId, userHash)` (or as `userId` and
 * `userHash` options). Anonymous visitors need none: `Headstart.anonymousId()` gives the
 * browser's own id ("anon-" + a random UUID, kept in localStorage); after identify() the next
 * events batch for the user links that id to the user. Refusals (a missing or wrong hash: 403)
 * reject with the server's message, as `error.status` and `error.code`.
 *
 * decide() waits at most `timeoutMs` (800 ms). When Headstart is slow or unreachable it answers
 * from the user's last decision (kept in localStorage) with `offline: true`, its flags worked
 * out again from the signed ruleset and the user's last segments. Events are batched (one batch
 * per user) and kept (in localStorage too) until Headstart has stored them. A ruleset is used
 * only if its signature (ECDSA P-256, WebCrypto) matches the pinned key: the one given as
 * `rulesetKey`, or the first one fetched from /v1/ruleset/key.
 */
(function (root) {
  "use strict";

  function randomId() {
    if (root.crypto && root.crypto.randomUUID) return root.crypto.randomUUID().replace(/-/g, "");
    let out = "";
    for (let i = 0; i < 32; i++) out += Math.floor(Math.random() * 16).toString(16);
    return out;
  }

  /** The API takes at most this many events per batch. */
  const MAX_BATCH = 1000;
  const ANONYMOUS_ID_KEY = "hs:anonymous-id";

  function memoryStorage() {
    const data = {};
    return {
      getItem: (k) => (k in data ? data[k] : null),
      setItem: (k, v) => { data[k] = String(v); },
      removeItem: (k) => { delete data[k]; },
    };
  }

  function b64urlBytes(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  /** The first rule that matches decides a flag; a rollout rule's outcome is not computable
   * here (it hashes the pseudonymized key), so the user's last known value stands in. */
  function evaluateFlags(ruleset, segments, lastFlags) {
    const member = new Set(segments || []);
    const flags = {};
    for (const flag of ruleset.flags || []) {
      let value = flag.default;
      for (const rule of flag.rules) {
        if (rule.segments.length && !rule.segments.some((s) => member.has(s))) continue;
        if (rule.rollout !== null && rule.rollout !== undefined) {
          if (lastFlags && flag.id in lastFlags) { value = lastFlags[flag.id]; break; }
          continue;
        }
        value = rule.value;
        break;
      }
      flags[flag.id] = value;
    }
    return flags;
  }

  function defaultStorage() {
    try {
      return root.localStorage || memoryStorage();
    } catch (e) {
      return memoryStorage(); // storage denied (sandboxed frame, privacy settings)
    }
  }

  class Headstart {
    constructor(options) {
      const o = options || {};
      this.baseUrl = (o.baseUrl || "").replace(/\/$/, "");
      this.apiKey = o.apiKey;
      this.timeoutMs = o.timeoutMs || 800;
      this.batchSize = o.batchSize || 20;
      this.flushMs = o.flushMs || 1000;
      this.rulesetKey = o.rulesetKey || null;
      this.storage = o.storage || defaultStorage();
      this.anonymousPrefix = o.anonymousPrefix || "anon-";
      this.queue = this._load("hs:queue") || [];
      // The hashes of users whose events wait in the queue (so they can still be sent after a
      // reload), then of every user identified on this page.
      this.hashes = this._load("hs:queue-hashes") || {};
      this.defaultHash = null;
      this._link = null;
      this.ruleset = this._load("hs:ruleset");
      this._timer = null;
      if (o.userId) this.identify(o.userId, o.userHash);
      else if (o.userHash) this.defaultHash = o.userHash; // for every identified user this page names
    }

    /** The browser's anonymous visitor id: made once ("anon-" + a random UUID), then kept. */
    static anonymousId(options) {
      const o = options || {};
      const storage = o.storage || defaultStorage();
      let id = storage.getItem(ANONYMOUS_ID_KEY);
      if (!id) {
        const uuid = root.crypto && root.crypto.randomUUID ? root.crypto.randomUUID() : randomId();
        id = (o.prefix || "anon-") + uuid;
        try { storage.setItem(ANONYMOUS_ID_KEY, id); } catch (e) { /* full or denied: this page only */ }
      }
      return id;
    }

    /** This client's anonymous id (its storage and prefix). */
    anonymousId() {
      return Headstart.anonymousId({ storage: this.storage, prefix: this.anonymousPrefix });
    }

    /**
     * The user signed in: requests naming `userId` carry `userHash` (from the product's
     * backend). If this browser had an anonymous id, the next events batch for the user links
     * it to the user (once per pair).
     */
    identify(userId, userHash) {
      if (userHash) this.hashes[userId] = userHash;
      const anonymous = this.storage.getItem(ANONYMOUS_ID_KEY);
      const linked = this._load("hs:linked");
      if (anonymous && anonymous !== userId && !this._isAnonymous(userId) &&
          !(linked && linked.anonymous_id === anonymous && linked.user_id === userId)) {
        this._link = { anonymous_id: anonymous, user_id: userId };
      }
    }

    /** The user signed out: forget the hashes, and start a new anonymous id. */
    reset() {
      this.hashes = this._waitingHashes(); // events tracked before still go out as the user's
      this.defaultHash = null;
      this._link = null;
      this.storage.removeItem(ANONYMOUS_ID_KEY);
      this._saveQueue();
    }

    _isAnonymous(userId) {
      return String(userId).startsWith(this.anonymousPrefix);
    }

    /** The body of a request naming `userId`, with its user_hash when one is known. */
    _signed(userId, body) {
      const hash = this.hashes[userId] || (this._isAnonymous(userId) ? null : this.defaultHash);
      if (hash) body.user_hash = hash;
      return body;
    }

    _load(key) {
      const raw = this.storage.getItem(key);
      if (!raw) return null;
      try { return JSON.parse(raw); } catch (e) { return null; }
    }

    _save(key, value) {
      try { this.storage.setItem(key, JSON.stringify(value)); } catch (e) { /* full or denied */ }
    }

    async _fetch(path, init, timeoutMs) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), timeoutMs || this.timeoutMs);
      const headers = Object.assign({ "Content-Type": "application/json" }, (init && init.headers) || {});
      if (this.apiKey) headers.Authorization = "Bearer " + this.apiKey;
      try {
        const response = await fetch(this.baseUrl + path, Object.assign({}, init, { headers, signal: controller.signal }));
        const body = await response.json().catch(() => ({}));
        if (!response.ok) {
          const error = new Error((body.error && body.error.message) || "HTTP " + response.status);
          error.status = response.status;
          error.code = body.error && body.error.code;
          throw error;
        }
        return body;
      } finally {
        clearTimeout(timer);
      }
    }

    /** The next onboarding step for a user; the last known answer if Headstart is slow. */
    async decide(userId, context) {
      const cacheKey = "hs:decision:" + userId;
      try {
        const decision = await this._fetch("/v1/decide", {
          method: "POST",
          body: JSON.stringify(this._signed(userId, { user_id: userId, context: context || {} })),
        });
        decision.offline = false;
        this._save(cacheKey, decision);
        return decision;
      } catch (error) {
        if (error.status && error.status < 500 && error.status !== 429) throw error; // our mistake
        const last = this._load(cacheKey);
        const ruleset = this.ruleset;
        const decision = last || { step: null, tutorial: null, message: "", flags: {}, segments: [], experiments: {} };
        decision.offline = true;
        decision.offline_reason = String(error.message || error);
        if (ruleset) decision.flags = evaluateFlags(ruleset, decision.segments, last && last.flags);
        return decision;
      }
    }

    /** A flag for a user: the last decision's value, else the signed ruleset's default. */
    flag(userId, flagId) {
      const last = this._load("hs:decision:" + userId);
      if (last && flagId in last.flags) return last.flags[flagId];
      if (this.ruleset) return evaluateFlags(this.ruleset, last ? last.segments : [], null)[flagId];
      return undefined;
    }

    /** Every flag's value for a user, with why (POST /v1/flags); rejects if refused. */
    async flags(userId, context) {
      return this._fetch("/v1/flags", {
        method: "POST",
        body: JSON.stringify(this._signed(userId, { user_id: userId, context: context || {} })),
      });
    }

    /** The tutorial variant for a step (`{ step }`) or a feature (`{ feature }`) this user
     * should see (POST /v1/tutorials/select); rejects if refused. */
    async selectTutorial(userId, which, context) {
      const body = Object.assign({ user_id: userId, context: context || {} }, which);
      return this._fetch("/v1/tutorials/select", { method: "POST", body: JSON.stringify(this._signed(userId, body)) });
    }

    /** Record a user's consent per purpose (`{ analytics, personalization }`); rejects if refused. */
    async consent(userId, purposes) {
      const body = Object.assign({}, purposes);
      return this._fetch("/v1/users/" + encodeURIComponent(userId) + "/consent", {
        method: "PUT",
        body: JSON.stringify(this._signed(userId, body)),
      }, 5000);
    }

    /** Queue an event; sent in batches (and kept until Headstart stored them). */
    track(userId, type, props, context) {
      const event = { event_id: randomId(), user_id: userId, type, ts: Date.now() / 1000 };
      if (props) event.props = props;
      if (context) event.context = context;
      this.queue.push(event);
      this._saveQueue();
      if (this.queue.length >= this.batchSize) return this.flush().catch((e) => this._warn(e));
      if (!this._timer) this._timer = setTimeout(() => this.flush().catch((e) => this._warn(e)), this.flushMs);
      return Promise.resolve(0);
    }

    /**
     * Send queued events now, one batch per user (with its user_hash, and the anonymous id to
     * link after identify()); resolves to how many Headstart stored. A batch Headstart refuses
     * (invalid events, a missing or wrong user_hash) is dropped, since sending it again cannot
     * work, and the promise rejects with the first refusal once the other batches were sent.
     * Unreachable or busy: the rest is kept and sent again later.
     */
    async flush() {
      clearTimeout(this._timer);
      this._timer = null;
      let stored = 0;
      let refusal = null;
      while (this.queue.length) {
        const userId = this.queue[0].user_id;
        const batch = this.queue.filter((e) => e.user_id === userId).slice(0, MAX_BATCH);
        const body = this._signed(userId, { events: batch });
        const link = this._link && this._link.user_id === userId ? this._link : null;
        if (link) body.anonymous_id = link.anonymous_id;
        try {
          const answer = await this._fetch("/v1/events", { method: "POST", body: JSON.stringify(body) }, 5000);
          stored += answer.accepted;
          if (link) {
            this._save("hs:linked", link);
            if (this._link === link) this._link = null;
          }
        } catch (error) {
          if (!error.status || error.status >= 500 || error.status === 429) {
            this._timer = setTimeout(() => this.flush().catch((e) => this._warn(e)), Math.min(this.flushMs * 4, 30000));
            break; // kept: sent again later
          }
          refusal = refusal || error;
          this._warn(error);
        }
        // By id: events tracked meanwhile stay queued, and so do other users'.
        const sent = new Set(batch.map((e) => e.event_id));
        this.queue = this.queue.filter((e) => !sent.has(e.event_id));
        this._saveQueue();
      }
      if (refusal) {
        refusal.stored = stored;
        throw refusal;
      }
      return stored;
    }

    _saveQueue() {
      this._save("hs:queue", this.queue);
      this._save("hs:queue-hashes", this._waitingHashes());
    }

    _waitingHashes() {
      const waiting = {};
      for (const event of this.queue) {
        if (this.hashes[event.user_id]) waiting[event.user_id] = this.hashes[event.user_id];
      }
      return waiting;
    }

    _warn(error) {
      if (root.console) root.console.warn("Headstart refused events:", error.message);
    }

    /** Fetch the signed ruleset and keep it if its signature matches the pinned key. */
    async loadRuleset() {
      let jwk = this.rulesetKey || this._load("hs:ruleset-key");
      if (!jwk) {
        jwk = await this._fetch("/v1/ruleset/key", { method: "GET" }, 5000);
        this._save("hs:ruleset-key", jwk); // trusted on first use, then pinned
      }
      const signed = await this._fetch("/v1/ruleset", { method: "GET" }, 5000);
      const key = await root.crypto.subtle.importKey("jwk", jwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      const ok = await root.crypto.subtle.verify(
        { name: "ECDSA", hash: "SHA-256" }, key, b64urlBytes(signed.signature), new TextEncoder().encode(signed.ruleset));
      if (!ok) throw new Error("ruleset signature does not match the pinned key");
      this.ruleset = JSON.parse(signed.ruleset);
      this._save("hs:ruleset", this.ruleset);
      return this.ruleset;
    }
  }

  Headstart.evaluateFlags = evaluateFlags;
  root.Headstart = Headstart;
  if (typeof module !== "undefined" && module.exports) module.exports = Headstart;
})(typeof self !== "undefined" ? self : this);
