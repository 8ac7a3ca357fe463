/*
 * Headstart's JavaScript client: no dependencies, for pages and the demo.
 *
 *   const hs = new Headstart({ apiKey: "<frontend key>" });
 *   const decision = await hs.decide("alice@example.com", { device_type: "mobile" });
 *   hs.track("alice@example.com", "step_completed", { step: decision.step.id });
 *   await hs.loadRuleset();              // signed flags/targeting, for when Headstart is slow
 *   hs.flag("alice@example.com", "new_onboarding");
 *
 * decide() waits at most `timeoutMs` (800 ms). When Headstart is slow or unreachable it answers
 * from the user's last decision (kept in localStorage) with `offline: true`, its flags worked
 * out again from the signed ruleset and the user's last segments. Events are batched and kept
 * (in localStorage too) until Headstart has stored them. A ruleset is used only if its
 * signature (ECDSA P-256, WebCrypto) matches the pinned key: the one given as `rulesetKey`, or
 * the first one fetched from /v1/ruleset/key.
 */
(function (root) {
  "use strict";

  function randomId() {
    if (root.crypto && root.crypto.randomUUID) return root.crypto.randomUUID().replace(/-/g, "");
    let out = "";
    for (let i = 0; i < 32; i++) out += Math.floor(Math.random() * 16).toString(16);
    return out;
  }

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

  class Headstart {
    constructor(options) {
      const o = options || {};
      this.baseUrl = (o.baseUrl || "").replace(/\/$/, "");
      this.apiKey = o.apiKey;
      this.timeoutMs = o.timeoutMs || 800;
      this.batchSize = o.batchSize || 20;
      this.flushMs = o.flushMs || 1000;
      this.rulesetKey = o.rulesetKey || null;
      try {
        this.storage = o.storage || root.localStorage || memoryStorage();
      } catch (e) {
        this.storage = memoryStorage();
      }
      this.queue = this._load("hs:queue") || [];
      this.ruleset = this._load("hs:ruleset");
      this._timer = null;
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
          body: JSON.stringify({ user_id: userId, context: context || {} }),
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

    /** Queue an event; sent in batches (and kept until Headstart stored them). */
    track(userId, type, props, context) {
      const event = { event_id: randomId(), user_id: userId, type, ts: Date.now() / 1000 };
      if (props) event.props = props;
      if (context) event.context = context;
      this.queue.push(event);
      this._save("hs:queue", this.queue);
      if (this.queue.length >= this.batchSize) return this.flush();
      if (!this._timer) this._timer = setTimeout(() => this.flush(), this.flushMs);
      return Promise.resolve(0);
    }

    /** Send queued events now; resolves to how many Headstart stored. */
    async flush() {
      clearTimeout(this._timer);
      this._timer = null;
      let stored = 0;
      while (this.queue.length) {
        const batch = this.queue.slice(0, 1000);
        try {
          const answer = await this._fetch("/v1/events", { method: "POST", body: JSON.stringify({ events: batch }) }, 5000);
          stored += answer.accepted;
        } catch (error) {
          if (!error.status || error.status >= 500 || error.status === 429) {
            this._timer = setTimeout(() => this.flush(), Math.min(this.flushMs * 4, 30000));
            return stored; // kept: sent again later
          }
          // Refused as invalid: dropping it is the only way forward (and it says why).
          if (root.console) root.console.warn("Headstart refused events:", error.message);
        }
        this.queue.splice(0, batch.length);
        this._save("hs:queue", this.queue);
      }
      return stored;
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
