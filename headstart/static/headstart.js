/*
 * Headstart's JavaScript client: no dependencies, for pages and the demo.
 *
 *   const hs = new Headstart({ apiKey: "<frontend key>", baseUrl: "https://headstart.example.com" });
 *   hs.identify("alice@example.com", userHashFromYourBackend);   // identity verification
 *   const decision = await hs.decide("alice@example.com", { device_type: "mobile" });
 *   hs.track("alice@example.com", "step_completed", { step: decision.step.id });
 *   await hs.loadRuleset();              // signed flags/targeting, for when Headstart is slow
 *   hs.flag("alice@example.com", "new_onboarding");
 *   await hs.mount("alice@example.com", { container: "#onboarding" });  // the onboarding kit
 *
 * The onboarding kit (docs/kit.md): mount() renders each decision for the user: the journey as
 * a checklist, the decided tutorial variant as a tour or a tooltip, the welcome message as a
 * banner (only the surfaces the engine's pacing allows now), and hs-seg-* / hs-flag-* classes
 * on <html>; what the user does with them goes back as events. Every decision carries the
 * browser's time zone as context.timezone.
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

  /** The request's context with the browser's time zone (IANA name), which pacing's quiet
   * hours are in, unless the page gave one. */
  function withTimezone(context) {
    const out = Object.assign({}, context);
    if (!out.timezone) {
      try {
        out.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone || undefined;
      } catch (e) { /* no Intl: Headstart assumes UTC */ }
    }
    return out;
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

    /**
     * The next onboarding step for a user; the last known answer if Headstart is slow. A page
     * with a kit mounted for this user (mount()) shows each decision as it comes.
     */
    async decide(userId, context) {
      const cacheKey = "hs:decision:" + userId;
      let decision;
      try {
        decision = await this._fetch("/v1/decide", {
          method: "POST",
          body: JSON.stringify(this._signed(userId, { user_id: userId, context: withTimezone(context) })),
        });
        decision.offline = false;
        this._save(cacheKey, decision);
      } catch (error) {
        if (error.status && error.status < 500 && error.status !== 429) throw error; // our mistake
        const last = this._load(cacheKey);
        const ruleset = this.ruleset;
        decision = last || { step: null, tutorial: null, message: "", flags: {}, segments: [], experiments: {} };
        decision.offline = true;
        decision.offline_reason = String(error.message || error);
        if (ruleset) decision.flags = evaluateFlags(ruleset, decision.segments, last && last.flags);
      }
      if (this._kit && this._kit.userId === userId) {
        try { this._kit.render(decision); } catch (e) { if (root.console) root.console.error("Headstart kit:", e); }
      }
      return decision;
    }

    /**
     * Render onboarding for `userId` from its decisions (checklist, tour, tooltip, banner, the
     * <html> classes); resolves to the mounted kit ({ decision, refresh(context), unmount() })
     * once the first decision is shown. docs/kit.md has the options and the events sent.
     */
    async mount(userId, options) {
      if (this._kit) this._kit.unmount();
      const kit = new Kit(this, userId, options || {});
      this._kit = kit;
      if (this.queue.length) {
        // A tour step viewed just before a reload reaches Headstart before the decision asked now.
        await Promise.race([this.flush().catch(() => 0), new Promise((r) => setTimeout(r, this.timeoutMs))]);
      }
      try {
        await kit.refresh();
      } catch (error) {
        kit.unmount(); // refused (a 403): nothing is left on the page
        throw error;
      }
      return kit;
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
        body: JSON.stringify(this._signed(userId, { user_id: userId, context: withTimezone(context) })),
      });
    }

    /** The tutorial variant for a step (`{ step }`) or a feature (`{ feature }`) this user
     * should see (POST /v1/tutorials/select); rejects if refused. */
    async selectTutorial(userId, which, context) {
      const body = Object.assign({ user_id: userId, context: withTimezone(context) }, which);
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
    flush() {
      // One flush at a time (the kit sends its events as they happen): the next one starts
      // when this one ends, so no batch goes out twice.
      const run = (this._flushing || Promise.resolve()).then(() => 0, () => 0).then(() => this._flushNow());
      const done = () => { if (this._flushing === run) this._flushing = null; };
      this._flushing = run;
      run.then(done, done);
      return run;
    }

    async _flushNow() {
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

  // ------------------------------------------------------------------ the onboarding kit
  // What mount() renders from each decision: the journey as a checklist, the decided tutorial
  // variant as a tour or a tooltip, the welcome message as a banner (only surfaces the decision
  // allows now: `surfaces[x].show`), and classes on <html>. Flow events go through the client's
  // event queue, sent at once, so Headstart's live state (tour position, dismissals, pacing)
  // is current by the next decision, on this page or another device.

  const LABELS = {
    en: ["Get started", "{done} of {total} done", "(done)", "Next", "Back", "Finish", "Close",
      "Step {n} of {total}", "Got it", "All set!", "Welcome", "Show or hide the checklist", "Tip"],
    de: ["Erste Schritte", "{done} von {total} erledigt", "(erledigt)", "Weiter", "Zurück", "Fertig",
      "Schließen", "Schritt {n} von {total}", "Verstanden", "Alles erledigt!", "Willkommen",
      "Checkliste ein- oder ausblenden", "Tipp"],
    fr: ["Pour commencer", "{done} sur {total} terminées", "(terminé)", "Suivant", "Précédent",
      "Terminer", "Fermer", "Étape {n} sur {total}", "Compris", "Tout est prêt !", "Bienvenue",
      "Afficher ou masquer la liste", "Astuce"],
    es: ["Primeros pasos", "{done} de {total} completados", "(completado)", "Siguiente", "Atrás",
      "Terminar", "Cerrar", "Paso {n} de {total}", "Entendido", "¡Todo listo!", "Bienvenida",
      "Mostrar u ocultar la lista", "Consejo"],
    pt: ["Primeiros passos", "{done} de {total} concluídos", "(concluído)", "Próximo", "Voltar",
      "Concluir", "Fechar", "Passo {n} de {total}", "Entendi", "Tudo pronto!", "Boas-vindas",
      "Mostrar ou ocultar a lista", "Dica"],
    ar: ["لنبدأ", "تم {done} من {total}", "(تم)", "التالي", "السابق", "إنهاء", "إغلاق",
      "الخطوة {n} من {total}", "فهمت", "اكتمل كل شيء!", "مرحبًا", "إظهار قائمة المهام أو إخفاؤها", "تلميح"],
    he: ["בואו נתחיל", "{done} מתוך {total} הושלמו", "(הושלם)", "הבא", "הקודם", "סיום", "סגירה",
      "שלב {n} מתוך {total}", "הבנתי", "הכול מוכן!", "ברוכים הבאים", "הצגה או הסתרה של רשימת המשימות", "טיפ"],
  };
  const LABEL_KEYS = ["checklist", "progress", "complete", "next", "back", "finish", "close", "step",
    "gotIt", "allSet", "welcome", "toggle", "tip"];
  /** Languages written right to left (the locale's language subtag). */
  const RTL = ["ar", "he", "fa", "ur", "yi", "ps", "dv", "ckb", "ug", "sd"];
  const language = (locale) => String(locale || "en").split(/[-_]/)[0].toLowerCase();

  /** The kit's texts in a locale's language (English when it has none), as an object. */
  function kitLabels(locale, overrides) {
    const texts = LABELS[language(locale)] || LABELS.en;
    const out = {};
    LABEL_KEYS.forEach((key, i) => { out[key] = texts[i]; });
    return Object.assign(out, overrides);
  }

  function isRtl(locale) {
    return RTL.indexOf(language(locale)) >= 0;
  }

  /** "{done} of {total}" with numbers written in the locale's digits. */
  function format(text, values, locale) {
    return text.replace(/\{(\w+)\}/g, (_, key) => {
      try { return Number(values[key]).toLocaleString(locale); } catch (e) { return String(values[key]); }
    });
  }

  // Theming: every color, radius and font is a custom property with a default declared under
  // :where(:root), which weighs nothing, so a page's own `:root { --hs-accent: ... }` wins
  // wherever it is. The defaults meet WCAG AA contrast. Motion only for those who did not ask
  // for less (prefers-reduced-motion).
  const STYLE = ":where(:root){--hs-accent:#2454c5;--hs-accent-text:#fff;--hs-bg:#fff;--hs-fg:#1d2330;" +
    "--hs-muted:#545d6e;--hs-border:#d5dae3;--hs-done:#1c7a3a;--hs-radius:8px;--hs-font:inherit;" +
    "--hs-shadow:0 6px 24px rgba(16,24,40,.18);--hs-backdrop:rgba(16,24,40,.35);--hs-z:2147483000}" +
    ".hs-kit{font:14px/1.45 var(--hs-font);font-family:var(--hs-font,system-ui,sans-serif);color:var(--hs-fg);" +
    "box-sizing:border-box;text-align:start}.hs-kit *{box-sizing:inherit}" +
    ".hs-kit button{font:inherit;cursor:pointer;border-radius:calc(var(--hs-radius)*.75);padding:5px 12px;" +
    "border:1px solid var(--hs-border);background:var(--hs-bg);color:var(--hs-fg)}" +
    ".hs-kit .hs-primary{background:var(--hs-accent);border-color:var(--hs-accent);color:var(--hs-accent-text)}" +
    ".hs-kit :focus-visible{outline:2px solid var(--hs-accent);outline-offset:2px}" +
    ".hs-kit .hs-close{border:0;background:none;padding:2px 8px;font-size:18px;line-height:1;color:var(--hs-muted)}" +
    ".hs-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}" +
    ".hs-card{background:var(--hs-bg);border:1px solid var(--hs-border);border-radius:var(--hs-radius);" +
    "box-shadow:var(--hs-shadow);padding:12px 14px}" +
    ".hs-panel{position:fixed;inset-block-end:16px;inset-inline-end:16px;z-index:var(--hs-z);" +
    "width:min(320px,calc(100vw - 32px));max-height:70vh;overflow:auto}" +
    ".hs-head{display:flex;align-items:center;gap:8px}.hs-head .hs-title{flex:1}" +
    ".hs-kit .hs-title{font-size:15px;font-weight:600;margin:0}" +
    ".hs-kit .hs-body,.hs-kit .hs-meta{margin:6px 0 0}.hs-kit .hs-meta{color:var(--hs-muted);font-size:13px}" +
    ".hs-progress{display:block;width:100%;height:6px;accent-color:var(--hs-accent);margin:6px 0}" +
    ".hs-steps{list-style:none;margin:6px 0 0;padding:0}.hs-steps[hidden]{display:none}" +
    ".hs-item{display:flex;gap:8px;align-items:baseline;padding:5px 0;border-top:1px solid var(--hs-border)}" +
    ".hs-mark{flex:none;width:1.2em;text-align:center;color:var(--hs-muted)}" +
    ".hs-item.hs-done .hs-mark{color:var(--hs-done)}.hs-item.hs-done .hs-label{color:var(--hs-muted);text-decoration:line-through}" +
    ".hs-item[aria-current] .hs-mark{color:var(--hs-accent)}[dir=rtl] .hs-item[aria-current] .hs-mark{transform:scaleX(-1)}.hs-item[aria-current] .hs-label{font-weight:600}" +
    ".hs-kit a.hs-label{color:inherit}.hs-item[aria-current] a.hs-label{color:var(--hs-accent)}" +
    ".hs-tour,.hs-tooltip{position:fixed;z-index:var(--hs-z);max-width:min(340px,calc(100vw - 16px))}" +
    ".hs-tour .hs-close{position:absolute;inset-block-start:6px;inset-inline-end:4px}" +
    ".hs-tour .hs-title{padding-inline-end:28px}" +
    ".hs-foot{display:flex;gap:6px;align-items:center;margin-top:10px}.hs-foot .hs-meta{flex:1;margin:0}" +
    ".hs-spot{position:fixed;z-index:calc(var(--hs-z) - 1);pointer-events:none;border-radius:var(--hs-radius);" +
    "box-shadow:0 0 0 3px var(--hs-accent),0 0 0 100vmax var(--hs-backdrop)}" +
    ".hs-hotspot{position:fixed;z-index:var(--hs-z);width:24px;height:24px;padding:0!important;" +
    "border-radius:50%!important;border:2px solid var(--hs-bg)!important;background:var(--hs-accent)!important}" +
    ".hs-hotspot::after{content:'';position:absolute;inset:-6px;border-radius:50%;border:2px solid var(--hs-accent);opacity:0}" +
    ".hs-banner{display:flex;gap:10px;align-items:center;padding:10px 16px;background:var(--hs-bg);" +
    "border-block-end:3px solid var(--hs-accent)}.hs-banner p{flex:1;margin:0}" +
    "@media (prefers-reduced-motion:no-preference){.hs-tour,.hs-tooltip{animation:hs-in .18s ease-out}" +
    ".hs-hotspot::after{animation:hs-pulse 1.8s ease-out infinite}}" +
    "@keyframes hs-in{from{opacity:0;transform:translateY(4px)}}" +
    "@keyframes hs-pulse{0%{opacity:.9;transform:scale(.6)}100%{opacity:0;transform:scale(1.4)}}";

  function injectStyles() {
    if (typeof document === "undefined" || document.getElementById("hs-kit-style")) return;
    const style = document.createElement("style");
    style.id = "hs-kit-style";
    style.textContent = STYLE;
    document.head.appendChild(style);
  }

  let uid = 0;
  const nextId = (what) => "hs-" + what + "-" + ++uid;

  /** An element: attributes (null/false left out; `text` sets the text, `on<event>` listens) and children. */
  function h(tag, attrs, children) {
    const el = document.createElement(tag);
    for (const key in attrs) {
      const value = attrs[key];
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = value;
      else if (key.slice(0, 2) === "on") el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children || []) if (child) el.appendChild(child);
    return el;
  }

  const byRef = (ref) => (typeof ref === "string" ? document.querySelector(ref) : ref);
  const classSafe = (id) => String(id).replace(/\s+/g, "_");
  const reducedMotion = () => !!(root.matchMedia && root.matchMedia("(prefers-reduced-motion: reduce)").matches);

  /** The element a CSS selector finds if it is on screen (laid out), else null. */
  function findTarget(selector) {
    let el = null;
    try { el = document.querySelector(selector); } catch (e) { return null; } // an invalid selector
    return el && el.getClientRects().length ? el : null;
  }

  /** The checklist: the journey in order, the decided step current, done ones marked. */
  function checklist(decision, labels, locale) {
    const current = decision.step ? decision.step.id : null;
    const journey = decision.journey || (decision.step ? [Object.assign({ done: false }, decision.step)] : []);
    const done = journey.filter((s) => s.done).length;
    const titleId = nextId("title");
    const listId = nextId("steps");
    const items = journey.map((s) => {
      const state = s.done ? "hs-done" : s.id === current ? "hs-current" : "hs-todo";
      const title = s.title || s.id;
      return h("li", { class: "hs-item " + state, "data-hs-step": s.id, "aria-current": s.id === current && "step" }, [
        h("span", { class: "hs-mark", "aria-hidden": "true", text: s.done ? "✓" : s.id === current ? "➜" : "○" }),
        s.url ? h("a", { class: "hs-label", href: s.url, text: title }) : h("span", { class: "hs-label", text: title }),
        s.done ? h("span", { class: "hs-sr", text: " " + labels.complete }) : null,
      ]);
    });
    const list = h("ol", { class: "hs-steps", id: listId }, items);
    const progress = format(labels.progress, { done, total: journey.length }, locale);
    const toggle = h("button", {
      class: "hs-close", type: "button", "aria-expanded": "true", "aria-controls": listId,
      "aria-label": labels.toggle, text: "▾",
      onclick: () => {
        list.hidden = !list.hidden;
        toggle.setAttribute("aria-expanded", String(!list.hidden));
        toggle.textContent = list.hidden ? "▸" : "▾";
      },
    });
    return h("section", { class: "hs-kit hs-card hs-checklist", "data-hs-surface": "checklist",
      "aria-labelledby": titleId, dir: isRtl(locale) ? "rtl" : "ltr", lang: locale }, [
      h("div", { class: "hs-head" }, [h("h2", { class: "hs-title", id: titleId, text: labels.checklist }), toggle]),
      h("p", { class: "hs-meta", text: current ? progress : labels.allSet }),
      h("progress", { class: "hs-progress", max: journey.length || 1, value: done, "aria-label": progress }),
      list,
    ]);
  }

  /** Where a box goes beside its target: the placement asked for if it fits in the viewport,
   * else the first that does (mirrored left/right in a right-to-left locale). */
  function place(box, target, placement, rtl) {
    const r = target.getBoundingClientRect();
    const b = box.getBoundingClientRect();
    const width = document.documentElement.clientWidth;
    const height = root.innerHeight;
    const gap = 12;
    let side = placement || "bottom";
    if (rtl && (side === "left" || side === "right")) side = side === "left" ? "right" : "left";
    const fits = {
      bottom: height - r.bottom >= b.height + gap, top: r.top >= b.height + gap,
      right: width - r.right >= b.width + gap, left: r.left >= b.width + gap,
    };
    if (!fits[side]) side = ["bottom", "top", rtl ? "left" : "right", rtl ? "right" : "left"].find((s) => fits[s]) || "bottom";
    let top = side === "top" ? r.top - b.height - gap : side === "bottom" ? r.bottom + gap : r.top + r.height / 2 - b.height / 2;
    let left = side === "left" ? r.left - b.width - gap : side === "right" ? r.right + gap : r.left + r.width / 2 - b.width / 2;
    left = Math.max(8, Math.min(left, width - b.width - 8));
    if (side === "left" || side === "right") top = Math.max(8, Math.min(top, height - b.height - 8));
    box.style.top = top + "px";
    box.style.left = left + "px";
    box.setAttribute("data-hs-placement", side);
  }

  /** Tab and Shift+Tab stay within `box` (a tour step is modal). */
  function trapTab(box, event) {
    const focusable = Array.prototype.filter.call(
      box.querySelectorAll("a[href],button:not([disabled]),input,select,textarea,[tabindex]:not([tabindex='-1'])"),
      (el) => el.getClientRects().length);
    if (!focusable.length) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (event.shiftKey && (document.activeElement === first || !box.contains(document.activeElement))) {
      last.focus();
      event.preventDefault();
    } else if (!event.shiftKey && (document.activeElement === last || !box.contains(document.activeElement))) {
      first.focus();
      event.preventDefault();
    }
  }

  class Kit {
    constructor(hs, userId, options) {
      const o = options;
      this.hs = hs;
      this.userId = userId;
      this.options = o;
      const docLang = typeof document !== "undefined" && document.documentElement.lang;
      this.locale = o.locale || (o.context && o.context.locale) || docLang || (root.navigator && root.navigator.language) || "en";
      this.context = Object.assign({ locale: this.locale }, o.context);
      this.labels = kitLabels(this.locale, o.labels);
      this.rtl = isRtl(this.locale);
      this.targetTimeoutMs = o.targetTimeoutMs || 5000;
      this.decision = null;
      // Surfaces closed or finished on this page: a decision made before Headstart applied the
      // event must not bring them back.
      this.closed = new Set();
      this.shown = new Set();
      this.surfaces = {}; // tour, tooltip, banner: what is on screen
      this.checklistKey = null;
      this._onKey = (event) => this._key(event);
      this._onMove = () => this._reposition();
      document.addEventListener("keydown", this._onKey);
      root.addEventListener("resize", this._onMove);
      root.addEventListener("scroll", this._onMove, { capture: true, passive: true });
      injectStyles();
      this.container = o.container === false ? null : byRef(o.container) || this._panel();
    }

    _panel() {
      this.panel = h("div", { class: "hs-kit hs-panel", dir: this.rtl ? "rtl" : "ltr" });
      document.body.appendChild(this.panel);
      return this.panel;
    }

    /** Ask Headstart again (with `context` merged into the mount's) and show the answer. */
    refresh(context) {
      if (context) Object.assign(this.context, context);
      return this.hs.decide(this.userId, this.context);
    }

    /** Remove everything the kit rendered, its listeners and its <html> classes. */
    unmount() {
      if (this.unmounted) return;
      this.unmounted = true;
      for (const name of Object.keys(this.surfaces)) this._remove(name, false);
      if (!this.hs._kit || this.hs._kit === this) this._classes([]); // not those of a kit mounted since
      if (this.panel) this.panel.remove();
      else if (this.container) this.container.textContent = "";
      document.removeEventListener("keydown", this._onKey);
      root.removeEventListener("resize", this._onMove);
      root.removeEventListener("scroll", this._onMove, { capture: true });
      if (this.hs._kit === this) this.hs._kit = null;
    }

    render(decision) {
      this.decision = decision;
      const flags = decision.flags || {};
      this._classes((decision.segments || []).map((s) => "hs-seg-" + classSafe(s))
        .concat(Object.keys(flags).filter((f) => flags[f] === true).map((f) => "hs-flag-" + classSafe(f))));
      if (this.container) {
        const key = JSON.stringify([decision.journey, decision.step && decision.step.id]);
        if (key !== this.checklistKey || !this.container.querySelector("[data-hs-surface=checklist]")) {
          this.checklistKey = key;
          const old = this.container.querySelector("[data-hs-surface=checklist]");
          const fresh = checklist(decision, this.labels, this.locale);
          if (old) old.replaceWith(fresh);
          else this.container.appendChild(fresh);
        }
      }
      this._banner(decision);
      this._tutorial(decision);
      if (this.options.onDecision) this.options.onDecision(decision);
    }

    /** `hs-seg-*` and `hs-flag-*` on <html>: exactly these. */
    _classes(wanted) {
      const list = document.documentElement.classList;
      for (const name of Array.prototype.slice.call(list)) {
        if (/^hs-(seg|flag)-/.test(name) && wanted.indexOf(name) < 0) list.remove(name);
      }
      for (const name of wanted) list.add(name);
    }

    _allowed(decision, surface) {
      const s = decision.surfaces && decision.surfaces[surface];
      return !decision.offline && !!(s && s.show); // offline: no pacing to ask, no interruption
    }

    /** A flow event with the decision that showed the surface, sent at once (the next
     * decision, maybe on the next page, needs it). */
    _event(type, props, decisionId) {
      props.decision_id = decisionId;
      this.hs.track(this.userId, type, props, this.context);
      return this.hs.flush().catch((e) => this.hs._warn(e));
    }

    /** Tours and tooltips this browser started for the user and did not finish (kept, so a
     * reload does not count as a new interruption): is `key` one, or mark it so. */
    _started(key, value) {
      const storageKey = "hs:started:" + this.userId;
      const keys = this.hs._load(storageKey) || [];
      if (value === undefined) return keys.indexOf(key) >= 0;
      this.hs._save(storageKey, keys.filter((k) => k !== key).concat(value ? [key] : []));
      return value;
    }

    _key(event) {
      const open = this.surfaces.tour || this.surfaces.tooltip;
      if (!open || !open.box) return;
      if (event.key === "Escape") {
        event.preventDefault();
        this._dismiss(this.surfaces.tour ? "tour" : "tooltip");
      } else if (event.key === "Tab" && this.surfaces.tour) {
        trapTab(open.box, event);
      }
    }

    _reposition() {
      if (this._frame) return;
      this._frame = (root.requestAnimationFrame || setTimeout)(() => {
        this._frame = null;
        for (const name of ["tour", "tooltip"]) {
          const s = this.surfaces[name];
          if (s && s.box && s.target) this._anchor(s);
        }
      });
    }

    _anchor(s) {
      if (!s.target.isConnected) return;
      const step = s.steps[s.index];
      if (s.spot) {
        const r = s.target.getBoundingClientRect();
        Object.assign(s.spot.style, { top: r.top - 4 + "px", left: r.left - 4 + "px",
          width: r.width + 8 + "px", height: r.height + 8 + "px" });
      }
      if (s.hotspot) {
        const r = s.target.getBoundingClientRect();
        const x = this.rtl ? r.left - 10 : r.right - 14;
        Object.assign(s.hotspot.style, { top: r.top - 10 + "px", left: x + "px" });
      }
      if (!s.box.hidden) place(s.box, s.target, step.placement, this.rtl);
    }

    _banner(decision) {
      const current = this.surfaces.banner;
      const message = decision.message;
      if (current) {
        current.box.querySelector("p").textContent = message || "";
        return;
      }
      const where = this.options.banner === false ? null : byRef(this.options.banner) || document.body;
      if (!where || !message || this.closed.has("banner") || !this._allowed(decision, "banner")) return;
      const box = h("div", { class: "hs-kit hs-banner", "data-hs-surface": "banner", role: "region",
        "aria-label": this.labels.welcome, dir: this.rtl ? "rtl" : "ltr", lang: this.locale }, [
        h("p", { text: message }),
        h("button", { class: "hs-close", type: "button", "aria-label": this.labels.close, text: "×",
          onclick: () => this._dismiss("banner") }),
      ]);
      where.insertBefore(box, where.firstChild);
      this.surfaces.banner = { id: "welcome", box, decisionId: decision.decision_id };
      if (!this.shown.has("banner")) {
        this.shown.add("banner");
        this._event("surface_shown", { surface: "banner", id: "welcome" }, decision.decision_id);
      }
    }

    /** The decided tutorial variant as a tour or a tooltip, unless one is on screen already
     * (a decision made mid-tour must not restart it) or it was closed on this page. */
    _tutorial(decision) {
      const t = decision.tutorial;
      if (!t || !t.tour || !t.tour.length) return;
      const surface = t.surface === "tooltip" ? "tooltip" : "tour";
      const key = surface + ":" + t.id + ":" + t.variant;
      if (this.surfaces[surface] || this.closed.has(key) || !this._allowed(decision, surface)) return;
      const s = {
        surface, key, id: t.id, variant: t.variant, steps: t.tour, index: -1, box: null, target: null,
        decisionId: decision.decision_id, returnFocus: document.activeElement,
        fresh: !(t.resume_at > 0) && !this._started(key),
      };
      this.surfaces[surface] = s;
      const from = Math.max(0, Math.min(t.resume_at || 0, t.tour.length - 1));
      this._await(s, from, true);
    }

    /**
     * Show step `index` once its target is on the page, waiting for it (MutationObserver) up to
     * `targetTimeoutMs`. Then, within the tour, the step is skipped (tour_step_skipped) and the
     * tour goes on with the next; opening (mount, reload, another page), the first later step
     * whose target is here is shown instead (a tour spanning pages), or the first of them to
     * appear while the page is open, and nothing is recorded.
     */
    _await(s, index, opening) {
      let last = index + 1;
      const look = () => {
        for (let i = index; i < last; i++) {
          const target = findTarget(s.steps[i].target);
          if (target) {
            stop();
            this._show(s, i, target);
            return true;
          }
        }
        return false;
      };
      let pending = null;
      let timer = null;
      const observer = new MutationObserver(() => {
        // At most one look per 50 ms however busy the page is.
        if (!pending) pending = setTimeout(() => { pending = null; look(); }, 50);
      });
      const stop = () => {
        observer.disconnect();
        clearTimeout(timer);
        clearTimeout(pending);
        s.stop = null;
      };
      s.stop = stop;
      if (look()) return;
      observer.observe(document.documentElement, {
        childList: true, subtree: true, attributes: true, attributeFilter: ["class", "style", "hidden"] });
      timer = setTimeout(() => {
        if (opening) {
          last = s.steps.length;
          look();
          return;
        }
        stop();
        this._event("tour_step_skipped", { tutorial: s.id, variant: s.variant, index, reason: "target_not_found" },
          s.decisionId);
        if (index + 1 < s.steps.length) this._await(s, index + 1, false);
        else this._finish(s);
      }, this.targetTimeoutMs);
    }

    _show(s, index, target) {
      if (this.surfaces[s.surface] !== s) return;
      const first = s.index < 0;
      s.index = index;
      s.target = target;
      const step = s.steps[index];
      if (first && s.fresh) {
        this._started(s.key, true);
        this._event("surface_shown", { surface: s.surface, id: s.id }, s.decisionId);
        this._event("tutorial_started", { tutorial: s.id, variant: s.variant }, s.decisionId);
      }
      // A tooltip is its variant's step 0: viewed too (the engine keeps it "in progress").
      this._event("tour_step_viewed", { tutorial: s.id, variant: s.variant, index }, s.decisionId);
      if (s.surface === "tour") {
        this._tourStep(s, step, index);
      } else {
        this._tooltip(s, step);
      }
      if (target.scrollIntoView) {
        const r = target.getBoundingClientRect();
        if (r.top < 0 || r.bottom > root.innerHeight) {
          target.scrollIntoView({ block: "center", behavior: reducedMotion() ? "auto" : "smooth" });
        }
      }
      this._anchor(s);
    }

    _tourStep(s, step, index) {
      const L = this.labels;
      const titleId = nextId("title");
      const bodyId = nextId("body");
      const lastStep = index === s.steps.length - 1;
      const next = h("button", { class: "hs-primary", type: "button", "data-hs-action": "next",
        text: lastStep ? L.finish : L.next,
        onclick: () => (lastStep ? this._finish(s) : this._go(s, index + 1)) });
      const box = h("div", { class: "hs-kit hs-card hs-tour", "data-hs-surface": "tour", "data-hs-index": index,
        role: "dialog", "aria-modal": "true", "aria-labelledby": titleId, "aria-describedby": bodyId,
        dir: this.rtl ? "rtl" : "ltr", lang: this.locale, tabindex: "-1" }, [
        h("button", { class: "hs-close", type: "button", "aria-label": L.close, "data-hs-action": "close",
          text: "×", onclick: () => this._dismiss("tour") }),
        h("h2", { class: "hs-title", id: titleId, text: step.title }),
        h("p", { class: "hs-body", id: bodyId, text: step.body }),
        h("div", { class: "hs-foot" }, [
          h("p", { class: "hs-meta", text: format(L.step, { n: index + 1, total: s.steps.length }, this.locale) }),
          index > 0 ? h("button", { type: "button", "data-hs-action": "back", text: L.back,
            onclick: () => this._go(s, index - 1) }) : null,
          next,
        ]),
      ]);
      this._clear(s);
      s.box = box;
      s.spot = h("div", { class: "hs-spot", "aria-hidden": "true" });
      document.body.appendChild(s.spot);
      document.body.appendChild(box);
      next.focus({ preventScroll: true });
    }

    _tooltip(s, step) {
      const L = this.labels;
      const tipId = nextId("tip");
      const box = h("div", { class: "hs-kit hs-card hs-tooltip", "data-hs-surface": "tooltip", role: "tooltip",
        id: tipId, dir: this.rtl ? "rtl" : "ltr", lang: this.locale }, [
        h("p", { class: "hs-title", text: step.title }),
        h("p", { class: "hs-body", text: step.body }),
        h("div", { class: "hs-foot" }, [
          h("span", { class: "hs-meta" }),
          h("button", { type: "button", "data-hs-action": "close", text: L.close, onclick: () => this._dismiss("tooltip") }),
          h("button", { class: "hs-primary", type: "button", "data-hs-action": "next", text: L.gotIt,
            onclick: () => this._finish(s) }),
        ]),
      ]);
      // The hotspot opens and closes the tip; the tip describes it.
      const hotspot = h("button", { class: "hs-kit hs-hotspot", type: "button", "data-hs-hotspot": "",
        "aria-label": L.tip + ": " + step.title, "aria-describedby": tipId, "aria-expanded": "true",
        "aria-controls": tipId, onclick: () => {
          box.hidden = !box.hidden;
          hotspot.setAttribute("aria-expanded", String(!box.hidden));
          if (!box.hidden) this._anchor(s);
        } });
      s.box = box;
      s.hotspot = hotspot;
      document.body.appendChild(hotspot);
      document.body.appendChild(box);
    }

    _go(s, index) {
      this._clear(s);
      s.box = null;
      this._await(s, index, false);
    }

    /** The tour or tooltip was gone through to its end: tutorial_completed, then a new
     * decision (a completed tutorial may complete its step). */
    _finish(s) {
      const sent = this._event("tutorial_completed", { tutorial: s.id, variant: s.variant }, s.decisionId);
      this.closed.add(s.key);
      this._started(s.key, false);
      this._remove(s.surface, true);
      sent.then(() => this.hs._kit === this && this.refresh()).catch(() => {});
    }

    /** Closed by the user (Esc, the close button) before its end: surface_dismissed. */
    _dismiss(name) {
      const s = this.surfaces[name];
      if (!s) return;
      this._event("surface_dismissed", { surface: name, id: s.id, index: name === "banner" ? null : Math.max(s.index, 0) },
        s.decisionId);
      this.closed.add(s.key || name);
      if (s.key) this._started(s.key, false);
      this._remove(name, true);
    }

    _clear(s) {
      for (const el of [s.box, s.spot, s.hotspot]) if (el) el.remove();
      s.spot = s.hotspot = null;
    }

    _remove(name, refocus) {
      const s = this.surfaces[name];
      if (!s) return;
      delete this.surfaces[name];
      if (s.stop) s.stop();
      const hadFocus = s.box && s.box.contains(document.activeElement);
      this._clear(s);
      if (s.box) s.box.remove();
      // Focus goes back where it was before the tour took it (or to the tooltip's target).
      const back = name === "tooltip" ? s.target : s.returnFocus;
      if (refocus && (hadFocus || name === "tour") && back && back.isConnected && back.focus) back.focus({ preventScroll: true });
    }
  }

  Headstart.kitLabels = kitLabels;
  Headstart.isRtl = isRtl;
  Headstart.injectStyles = injectStyles;
  Headstart.evaluateFlags = evaluateFlags;
  root.Headstart = Headstart;
  if (typeof module !== "undefined" && module.exports) module.exports = Headstart;
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this);
